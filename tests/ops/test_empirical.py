"""pydiffgen.ops.empirical_denoiser: every backend against a float64 brute force (σ from
0.002 to 80, odd shapes, near-duplicates, per-sample σ), small-σ exactness, topk,
gradcheck, opcheck, bad inputs and backend refusal. Triton runs in the interpreter."""

import pytest
import torch

from pydiffgen import _native
from pydiffgen.errors import BackendError, InputError
from pydiffgen.kernels import TRITON_WHY_NOT, interpreted
from pydiffgen.ops import empirical as E
from pydiffgen.ops import empirical_denoiser, reference

TRITON_ON_CPU = TRITON_WHY_NOT is None and interpreted()
CPP_WHY_NOT = _native.cpu_why_not("empirical_denoiser")
HAVE_CPP = CPP_WHY_NOT is None
SIGMAS = (0.002, 0.05, 1.0, 80.0)
SHAPES = [(1, 1, 3), (7, 5, 65), (33, 130, 64), (7, 1025, 3), (1, 1025, 65), (33, 5, 3)]


def brute(y, x, sigma):
    """float64 oracle over the full [M, N] matrix with direct differences."""
    y2, x2 = y.reshape(len(y), -1).double(), x.reshape(len(x), -1).double()
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    d2 = ((y2[:, None, :] - x2[None]) ** 2).sum(-1)
    return (torch.softmax(-d2 / (2 * s**2), dim=1) @ x2).reshape(y.shape)


def _backends():
    out = [pytest.param("reference", id="reference")]
    out.append(pytest.param("cpp", id="cpp", marks=pytest.mark.skipif(
        not HAVE_CPP, reason=str(CPP_WHY_NOT))))
    out.append(pytest.param("triton", id="triton", marks=pytest.mark.skipif(
        not TRITON_ON_CPU and not torch.cuda.is_available(), reason="no Triton here")))
    return out


def run(backend, y, x, sigma):
    """The backend's public code path; Triton is called directly on CPU (interpreter)."""
    if backend == "triton" and not y.is_cuda:
        sig = torch.as_tensor(sigma, dtype=torch.float64).expand(len(y)).contiguous()
        return E._triton(y.reshape(len(y), -1), x.reshape(len(x), -1), sig).reshape(y.shape)
    return empirical_denoiser(y, x, sigma, backend)


def _data(M, N, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, D, generator=g) * 2 - 1
    y = x[torch.arange(M) % N] + 0.3 * torch.randn(M, D, generator=g)
    return y, x


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("M,N,D", SHAPES)
def test_matches_float64(backend, M, N, D):
    y, x = _data(M, N, D)
    for sigma in SIGMAS:
        got = run(backend, y, x, sigma)
        assert got.dtype == torch.float32 and got.shape == y.shape
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), brute(y, x, sigma), atol=1e-5, rtol=0,
                                   msg=f"{backend} sigma={sigma}")


@pytest.mark.parametrize("backend", _backends())
def test_per_sample_sigma_and_near_duplicates(backend):
    g = torch.Generator().manual_seed(1)
    base = torch.rand(4, 64, generator=g) * 2 - 1
    # 130 near-copies of 4 images (differences 1e-4): many near-ties at small σ
    x = base.repeat(33, 1)[:130] + 1e-4 * torch.randn(130, 64, generator=g)
    y = base[torch.arange(33) % 4] + 0.05 * torch.randn(33, 64, generator=g)
    sigma = torch.logspace(-2.7, 1.9, 33)  # 0.002 .. 80, one per row
    got = run(backend, y, x, sigma)
    torch.testing.assert_close(got.double(), brute(y, x, sigma), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", _backends())
def test_small_sigma_returns_nearest_training_image_exactly(backend):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1025, 65, generator=g) * 2 - 1
    idx = torch.randint(0, 1025, (7,), generator=g)
    y = x[idx] + 0.01 * torch.randn(7, 65, generator=g)
    got = run(backend, y, x, 0.002)
    assert torch.equal(got, x[idx])


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_float64_and_noncontiguous(backend):
    if backend == "cpp" and not HAVE_CPP:
        pytest.skip("no C++ extension")
    y, x = _data(7, 130, 65)
    yt = y.double().T.contiguous().T  # non-contiguous view
    assert not yt.is_contiguous()
    for sigma in (0.002, 0.3, 80.0):
        got = empirical_denoiser(yt, x.double(), sigma, backend)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, brute(y, x, sigma), atol=1e-10, rtol=0)


def test_reference_closed_form():
    # two training points: D = x1 + (x2 − x1)·sigmoid((‖y−x1‖² − ‖y−x2‖²)/(2σ²))
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.3, 0.2]], dtype=torch.float64)
    sigma = torch.tensor([0.5], dtype=torch.float64)
    a = torch.sigmoid(torch.tensor((0.3**2 + 0.2**2 - 0.7**2 - 0.2**2) / (2 * 0.25)))
    got = reference.empirical_denoiser(y, x, sigma)
    torch.testing.assert_close(got[0], torch.stack([a, torch.zeros(())]).double())


def test_empty_queries():
    x = torch.rand(5, 3)
    out = empirical_denoiser(torch.empty(0, 3), x, 1.0)
    assert out.shape == (0, 3)


def test_topk_full_equals_full_and_close_at_moderate_sigma():
    y, x = _data(7, 130, 64)
    full = empirical_denoiser(y, x, 1.0)
    torch.testing.assert_close(empirical_denoiser(y, x, 1.0, topk=130), full, atol=1e-6, rtol=0)
    full = empirical_denoiser(y, x, 0.3)
    torch.testing.assert_close(empirical_denoiser(y, x, 0.3, topk=16), full, atol=1e-4, rtol=0)
    # at large σ truncation is visibly different: the test can fail
    diff = empirical_denoiser(y, x, 80.0, topk=4) - empirical_denoiser(y, x, 80.0)
    assert diff.abs().max() > 0.1


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_gradcheck(backend):
    if backend == "cpp" and not HAVE_CPP:
        pytest.skip("no C++ extension")
    y, x = _data(3, 20, 5)
    y = y.double().requires_grad_()
    sigma = torch.tensor([0.3, 0.7, 2.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: empirical_denoiser(t, x.double(), sigma, backend),
                                    (y,))
    assert torch.autograd.gradcheck(
        lambda t: empirical_denoiser(t, x.double(), sigma, topk=6), (y,))


def test_opcheck():
    y, x = _data(3, 20, 5)
    sig = torch.tensor([0.3, 0.7, 2.0], dtype=torch.float64)
    yd, xd = y.double().requires_grad_(), x.double()
    torch.library.opcheck(torch.ops.pydiffgen.empirical_denoiser_ref.default, (yd, xd, sig))
    out = reference.empirical_denoiser(yd.detach(), xd, sig)
    torch.library.opcheck(torch.ops.pydiffgen.empirical_denoiser_vjp.default,
                          (yd.detach(), xd, sig, out, torch.randn_like(out)))
    if HAVE_CPP:
        torch.library.opcheck(torch.ops.pydiffgen.empirical_denoiser.default, (yd, xd, sig))
    if TRITON_ON_CPU:
        torch.library.opcheck(torch.ops.pydiffgen.empirical_denoiser_triton.default,
                              (y, x, sig), test_utils=("test_schema", "test_faketensor"))


def test_torch_func_transforms_match_closed_form_jacobian():
    """vmap, jacrev and jacfwd of the public op: per-image Jacobians equal Cov_w/σ²."""
    from pydiffgen.analysis import EmpiricalDenoiser

    y, x = _data(3, 20, 5)
    y, x = y.double(), x.double()
    sigma = torch.tensor([0.3, 0.7, 2.0], dtype=torch.float64)
    one = lambda v, s: empirical_denoiser(v[None], x, s)[0]
    closed = EmpiricalDenoiser(x).jacobian(y, sigma)
    torch.testing.assert_close(torch.func.vmap(torch.func.jacrev(one))(y, sigma), closed)
    torch.testing.assert_close(torch.func.vmap(torch.func.jacfwd(one))(y, sigma), closed)
    torch.testing.assert_close(torch.func.vmap(one)(y, sigma), empirical_denoiser(y, x, sigma))


@pytest.mark.slow
def test_torch_compile_smoke():
    y, x = _data(4, 50, 7)
    compiled = torch.compile(lambda v: empirical_denoiser(v, x, 0.5) * 2, fullgraph=False)
    torch.testing.assert_close(compiled(y), empirical_denoiser(y, x, 0.5) * 2)


@pytest.mark.parametrize("bad,match", [
    (dict(sigma=0.0), "sigma"),
    (dict(sigma=-1.0), "sigma"),
    (dict(sigma=torch.tensor([1.0, float("nan")])), "sigma"),
    (dict(y=torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]])), "y contains NaN"),
    (dict(train=torch.rand(4, 2)), "feature shape"),
    (dict(train=torch.empty(0, 3)), "train is empty"),
    (dict(topk=5), "topk=5 exceeds"),
    (dict(topk=0), "topk must be"),
    (dict(sigma=torch.ones(3)), "sigma must be"),
])
def test_bad_inputs(bad, match):
    args = dict(y=torch.rand(2, 3), train=torch.rand(4, 3), sigma=1.0, topk=None)
    args.update(bad)
    with pytest.raises(InputError, match=match):
        empirical_denoiser(args["y"], args["train"], args["sigma"], topk=args["topk"])


def test_forced_unavailable_backend_lists_reasons():
    y, x = _data(2, 5, 3)
    with pytest.raises(BackendError, match="'triton' cannot run on cpu.*reference: ok"):
        empirical_denoiser(y, x, 1.0, backend="triton")
    with pytest.raises(BackendError, match="unknown backend"):
        empirical_denoiser(y, x, 1.0, backend="nope")
    if not _native.has_cpu_ops():
        with pytest.raises(BackendError, match="'cpp' cannot run"):
            empirical_denoiser(y, x, 1.0, backend="cpp")


def test_empirical_denoiser_module_prepares_once():
    """analysis.EmpiricalDenoiser holds one ops.EmpiricalIndex across calls and σ's, and
    prepares again only when its training set is replaced."""
    from pydiffgen.analysis import EmpiricalDenoiser

    g = torch.Generator().manual_seed(0)
    train = torch.rand(50, 3, 4, 4, generator=g) * 2 - 1
    model = EmpiricalDenoiser(train)
    y = train[:5] + 0.3 * torch.randn(5, 3, 4, 4, generator=g)
    for sigma in (0.01, 0.3, 10.0):
        want = empirical_denoiser(y, train, sigma)
        assert torch.allclose(model(y, sigma), want, rtol=0, atol=1e-6)
    index = model.index()
    assert model.index() is index
    model.train_set = train.clone()
    assert model.index() is not index


def test_empty_index_is_a_shard_only():
    """An EmpiricalIndex of no training points (a rank's empty shard for
    distributed.empirical_denoiser) prepares nothing and refuses to be called alone;
    its inputs are still checked against the feature shape."""
    from pydiffgen.ops import EmpiricalIndex

    index = EmpiricalIndex(torch.empty(0, 3, 2))
    assert len(index) == 0 and index.keys is None
    with pytest.raises(InputError, match="no training points"):
        index(torch.rand(2, 3, 2), 1.0)
    with pytest.raises(InputError, match="feature shape"):
        index.inputs(torch.rand(2, 6), 1.0)
    y, x, sig = index.inputs(torch.rand(2, 3, 2, dtype=torch.float64), 0.5)
    assert y.dtype == x.dtype == torch.float64 and x.shape == (0, 6) and sig.shape == (2,)
