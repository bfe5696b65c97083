"""knn: every backend vs the float64 brute force on odd shapes, near-duplicates, large
norms and bad inputs. The Triton score path also runs on CPU under the interpreter."""

import importlib

import numpy as np
import pytest
import torch

from pydiffgen.errors import BackendError, InputError
from pydiffgen.kernels import TRITON_WHY_NOT, interpreted
from pydiffgen.ops import dispatch, knn, reference

knn_mod = importlib.import_module("pydiffgen.ops.knn")  # the module; ops.knn is the function
_OP = dispatch.op("knn")
CPU_BACKENDS = [name for name, why in _OP.reasons("cpu").items() if not why.startswith("does not")]
TRITON_ON_CPU = TRITON_WHY_NOT is None and interpreted()


def _assert_knn(got, want, metric):
    v, i = got
    assert v.dtype == torch.float32 and i.dtype == torch.int64
    assert torch.equal(i, want[1]), (i, want[1])
    torch.testing.assert_close(v, want[0].float(), rtol=1e-6, atol=1e-6)


def test_reference_closed_form():
    keys = torch.tensor([[0.0], [1.0], [3.0], [1.0]])
    v, i = reference.knn_bruteforce(torch.tensor([[0.9]]), keys, 3)
    assert i.tolist() == [[1, 3, 0]]  # the duplicate key: lower index first
    torch.testing.assert_close(v, torch.tensor([[0.01, 0.01, 0.81]], dtype=torch.float64))
    v, i = reference.knn_bruteforce(torch.tensor([[1.0, 0.0]]),
                                    torch.tensor([[0.0, 2.0], [3.0, 0.1], [-1.0, 0.0]]), 2,
                                    metric="cosine")
    assert i.tolist() == [[1, 0]]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("M,N,D", [(1, 1, 3), (7, 33, 65), (127, 1025, 3), (33, 127, 64)])
@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_knn_matches_bruteforce(backend, M, N, D, k, metric):
    k = min(k, N)
    q, x = torch.randn(M, D), torch.randn(N, D)
    # small tiles: many merges per query chunk, several query chunks
    got = knn(q, x, k, metric, backend=backend, tile_elems=4096)
    _assert_knn(got, reference.knn_bruteforce(q, x, k, metric), metric)


def test_knn_images_float64_and_duplicates():
    x = torch.randn(40, 3, 4, 4, dtype=torch.float64)
    x = torch.cat([x, x[:10]])  # exact copies: equal distances, the lower index first
    q = x[[3, 45, 7]] + 1e-3 * torch.randn(3, 3, 4, 4, dtype=torch.float64)
    for metric in ("l2", "cosine", "ip"):
        _assert_knn(knn(q, x, 6, metric, tile_elems=300),
                    reference.knn_bruteforce(q, x, 6, metric), metric)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_near_duplicates_found(metric):
    base = torch.rand(60, 48) * 2 - 1  # image-like data in [-1, 1]
    copies = [base * (1 + 1e-6 * torch.randn_like(base)) for _ in range(3)]
    keys = torch.cat([base, *copies])  # [240, 48]: four near-identical versions of each
    pick = torch.tensor([5, 70, 131, 239, 0])
    queries = keys[pick].clone()
    v, i = knn(queries, keys, 4, metric, tile_elems=2048)
    assert torch.equal(i[:, 0], pick)  # the exact copy, not a 1e-6 neighbour
    _assert_knn((v, i), reference.knn_bruteforce(queries, keys, 4, metric), metric)


def test_large_norm_data():
    keys = torch.randn(500, 32) + 1e3  # offset: ‖x‖² ≈ 3e7 dwarfs the distances
    queries = torch.randn(20, 32) + 1e3
    _assert_knn(knn(queries, keys, 7, tile_elems=5000),
                reference.knn_bruteforce(queries, keys, 7), "l2")


@pytest.mark.skipif(not TRITON_ON_CPU, reason="needs TRITON_INTERPRET=1 and triton on CPU")
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_triton_path_interpreted(metric):
    """The triton backend's code path (Triton tiles → topk_merge → float64 re-rank), with
    CPU tensors in the interpreter."""
    q, x = torch.randn(9, 65), torch.randn(200, 65) + 10.0
    got = knn_mod.CertifiedKeys(x, metric, score_fn=knn_mod._triton_bound_tile).search(
        q, 5, 9 * 64)
    _assert_knn(got, reference.knn_bruteforce(q, x, 5, metric), metric)


def test_errors():
    q, x = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(InputError, match="k must be an integer >= 1"):
        knn(q, x, 0)
    with pytest.raises(InputError, match="exceeds the number of keys"):
        knn(q, x, 11)
    with pytest.raises(InputError, match="feature shape"):
        knn(q, torch.randn(10, 9), 3)
    with pytest.raises(InputError, match="NaN or Inf"):
        knn(torch.full((4, 8), float("nan")), x, 3)
    with pytest.raises(InputError, match="floating-point"):
        knn(q, torch.randint(0, 5, (10, 8)), 3)
    with pytest.raises(InputError, match="metric must be one of"):
        knn(q, x, 3, metric="hamming")
    with pytest.raises(BackendError, match="'triton' cannot run on cpu.*reference: ok"):
        knn(q, x, 3, backend="triton")


def test_backend_listing():
    reasons = _OP.reasons("cpu")
    assert reasons["reference"] == "ok"
    assert "triton" in reasons and reasons["triton"] != "ok"


@pytest.mark.gpu
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("M,N,D,k", [(1, 1, 3, 1), (127, 1025, 65, 5), (300, 20000, 64, 50)])
def test_knn_gpu_backends_match_bruteforce(metric, M, N, D, k):
    q = torch.randn(M, D, device="cuda")
    x = torch.randn(N, D, device="cuda") + 3.0
    want = reference.knn_bruteforce(q.cpu(), x.cpu(), k, metric)
    for backend, why in _OP.reasons("cuda").items():
        if why != "ok":
            continue
        v, i = knn(q, x, k, metric, backend=backend, tile_elems=1 << 16)
        _assert_knn((v.cpu(), i.cpu()), want, metric)


@pytest.mark.gpu
def test_knn_gpu_near_duplicates():
    base = torch.rand(500, 3 * 8 * 8, device="cuda") * 2 - 1
    keys = torch.cat([base, base * (1 + 1e-6 * torch.randn_like(base))])
    pick = torch.arange(0, 1000, 37, device="cuda")
    v, i = knn(keys[pick], keys, 3)
    assert torch.equal(i[:, 0], pick)
    assert _OP.select("cuda").name == "triton" or TRITON_WHY_NOT is not None


# ---- the certified cpp backend: every candidate precision, adversarial data -------------

CPP = "cpp" in _OP.reasons("cpu") and _OP.reasons("cpu")["cpp"] == "ok"
needs_cpp = pytest.mark.skipif(not CPP, reason="pydiffgen._C (cpp backend) is not built")
PRECISIONS = ["bf16", "fp32", "fp64"]


def _cpp(q, x, k, metric="l2", precision="bf16", tile_elems=1 << 15):
    return knn(q, x, k, metric, backend="cpp", tile_elems=tile_elems, precision=precision)


@needs_cpp
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_precisions_match_bruteforce(precision, metric, dtype):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(29, 3, 7, 5, generator=g, dtype=dtype)
    x = torch.randn(1031, 3, 7, 5, generator=g, dtype=dtype) + 0.3
    for k in (1, 7, 64):
        _assert_knn(_cpp(q, x, k, metric, precision),
                    reference.knn_bruteforce(q, x, k, metric), metric)


@needs_cpp
@pytest.mark.parametrize("precision", PRECISIONS)
def test_cpp_mixed_dtypes_and_noncontiguous(precision):
    x = torch.randn(300, 40, dtype=torch.float64)[:, ::2]  # non-contiguous float64 keys
    q = torch.randn(40, 25)[::3, :20]  # non-contiguous float32 queries
    _assert_knn(_cpp(q, x, 5, "l2", precision), reference.knn_bruteforce(q, x, 5), "l2")


@needs_cpp
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_cpp_near_duplicates(precision, metric):
    """The memorization case: four copies of each key differing by ~1e-7 relative."""
    g = torch.Generator().manual_seed(2)
    base = torch.rand(70, 3 * 8 * 8, generator=g) * 2 - 1
    copies = [base * (1 + 1e-7 * torch.randn(base.shape, generator=g)) for _ in range(3)]
    keys = torch.cat([base, *copies])
    pick = torch.tensor([5, 77, 139, 279, 0, 200])
    queries = keys[pick] + 1e-7 * torch.randn(len(pick), keys.shape[1], generator=g)
    _assert_knn(_cpp(queries, keys, 4, metric, precision),
                reference.knn_bruteforce(queries, keys, 4, metric), metric)


@needs_cpp
@pytest.mark.parametrize("precision", PRECISIONS)
def test_cpp_many_near_ties_overflow_and_escalate(precision):
    """800 keys at nearly the same distance from each query (a sphere shell, radii within
    1e-7): far more than the bf16/fp32 candidate budgets, so rows are redone at higher
    precision; the answer must still be the float64 one."""
    g = torch.Generator().manual_seed(3)
    D = 48
    q = torch.randn(3, D, generator=g, dtype=torch.float64)
    dirs = torch.randn(800, D, generator=g, dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    radii = 1 + 1e-7 * torch.rand(800, 1, generator=g, dtype=torch.float64)
    keys = torch.cat([q[i] + dirs * radii for i in range(3)]).float()
    keys = torch.cat([keys, torch.randn(500, D, generator=g) * 3])
    _assert_knn(_cpp(q.float(), keys, 6, "l2", precision),
                reference.knn_bruteforce(q.float(), keys, 6), "l2")


@needs_cpp
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_cpp_large_norms(precision, metric):
    g = torch.Generator().manual_seed(4)
    keys = torch.randn(700, 32, generator=g) * 1e3 + 1e5  # ‖x‖² ≈ 3e11 vs distances ≈ 6e7
    queries = torch.randn(20, 32, generator=g) * 1e3 + 1e5
    _assert_knn(_cpp(queries, keys, 7, metric, precision),
                reference.knn_bruteforce(queries, keys, 7, metric), metric)


def _assert_knn_up_to_duplicates(got, want, keys, metric):
    """As _assert_knn, but where the indices differ the keys must be identical copies (an
    exact tie, which the brute force's blocked float64 GEMM may round either way)."""
    v, i = got
    x = keys.reshape(len(keys), -1)
    differ = i != want[1]
    assert torch.equal(x[i[differ]], x[want[1][differ]]), (i, want[1])
    torch.testing.assert_close(v, want[0].float(), rtol=1e-6, atol=1e-6)


@needs_cpp
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_cpp_8bit_images_exact_int8(metric):
    """uint8 images take the exact int8 GEMM pass (cosine: a float pass); the same images
    as floats in [-1, 1] take the bf16 pass; both equal the float64 answer, exact ties
    (duplicated images) to the lower index."""
    g = torch.Generator().manual_seed(5)
    imgs = torch.randint(0, 256, (400, 3, 6, 6), generator=g, dtype=torch.uint8)
    imgs = torch.cat([imgs, imgs[:50]])  # exact duplicates
    q = torch.cat([imgs[[3, 401, 77]], torch.randint(0, 256, (9, 3, 6, 6), generator=g,
                                                       dtype=torch.uint8)])
    want = reference.knn_bruteforce(q.double(), imgs.double(), 5, metric)
    _assert_knn_up_to_duplicates(_cpp(q, imgs, 5, metric), want, imgs, metric)
    qf, xf = q.float() / 127.5 - 1, imgs.float() / 127.5 - 1
    want_f = reference.knn_bruteforce(qf, xf, 5, metric)
    _assert_knn_up_to_duplicates(_cpp(qf, xf, 5, metric, "bf16"), want_f, xf, metric)


@needs_cpp
def test_cpp_k_equals_n_and_single_key():
    q, x = torch.randn(5, 9), torch.randn(13, 9)
    for precision in PRECISIONS:
        _assert_knn(_cpp(q, x, 13, "l2", precision), reference.knn_bruteforce(q, x, 13), "l2")
    _assert_knn(_cpp(q, x[:1], 1), reference.knn_bruteforce(q, x[:1], 1), "l2")


@needs_cpp
def test_cpp_opcheck():
    q, x = torch.randn(6, 10), torch.randn(50, 10)
    mu = x.mean(0)
    for precision in (1, 4):  # bf16, q8
        prepared = torch.ops.pydiffgen.knn_prepare(x, mu, 0, precision)
        torch.library.opcheck(torch.ops.pydiffgen.knn_prepare, (x, mu, 0, precision))
        torch.library.opcheck(torch.ops.pydiffgen.knn_candidates,
                              (q, *prepared, mu, 3, 0, precision, 64, 30, 0),
                              test_utils=("test_schema", "test_faketensor"))
    cand = torch.randint(0, 50, (6, 8))
    torch.library.opcheck(torch.ops.pydiffgen.knn_rerank, (q, x, cand, 3, 0))


def test_precision_and_dtype_errors():
    q, x = torch.randn(4, 8), torch.randn(10, 8)
    with pytest.raises(InputError, match="precision must be one of"):
        knn(q, x, 3, precision="fp8")
    with pytest.raises(InputError, match="floating-point or uint8"):
        knn(q, x.to(torch.int32), 3)
    with pytest.raises(InputError, match="one device"):
        knn(q, x.to("meta"), 3)


@pytest.mark.slow
@needs_cpp
def test_knn_torch_compile_smoke():
    q, x = torch.randn(12, 16), torch.randn(300, 16)

    def f(a, b):
        v, i = knn(a, b, 4)
        return v.sqrt(), i

    v, i = torch.compile(f)(q, x)
    want = reference.knn_bruteforce(q, x, 4)
    assert torch.equal(i, want[1])
    torch.testing.assert_close(v, want[0].float().sqrt())


# ---- the certified GPU algorithm (pydiffgen.ops.knn_certified), torch twin + Triton -----

cert = importlib.import_module("pydiffgen.ops.knn_certified")


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_certified_bound_holds(metric):
    """The per-pair bound e must cover |s̃ − s| (s exact in float64) on data far from 0."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(40, 300, generator=g) * 3 + 7
    x = torch.randn(500, 300, generator=g) * 3 + 7
    centre = x.mean(0) if metric == "l2" else x.new_zeros(0)
    w, gamma, cg, ca, eta, safety = cert.constants(metric, 300, torch.bfloat16)
    qg, qn, dq, _ = cert.prepare(q, centre, metric, torch.bfloat16)
    xg, xn, dx, a = cert.prepare(x, centre, metric, torch.bfloat16)
    lo, hi = cert.torch_bound_tile(qg, xg, a, xn + dx, dx, w * (dq + gamma * qn), w * qn,
                                   w, cg, ca, eta, safety)
    qd, xd = q.double(), x.double()
    if metric == "l2":
        exact = ((qd[:, None] - xd[None]) ** 2).sum(-1) - ((qd - centre.double()) ** 2).sum(1,
                                                                                    keepdim=True)
    elif metric == "cosine":
        exact = -(qd / qd.norm(dim=1, keepdim=True)) @ (xd / xd.norm(dim=1, keepdim=True)).T
    else:
        exact = -qd @ xd.T
    assert bool((lo.double() <= exact).all()) and bool((exact <= hi.double()).all())
    assert float((hi - lo).max()) < 0.05 * float(exact.abs().max())  # not vacuous


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_certified_torch_twin_adversarial(metric):
    g = torch.Generator().manual_seed(7)
    base = torch.rand(80, 96, generator=g) * 2 - 1 + 100.0  # large offset
    copies = [base * (1 + 1e-7 * torch.randn(base.shape, generator=g)) for _ in range(3)]
    keys = torch.cat([base, *copies])
    q = keys[[3, 90, 170, 319]] + 1e-7 * torch.randn(4, 96, generator=g)
    got = knn_mod.CertifiedKeys(keys, metric).search(q, 5, 1 << 12)
    _assert_knn(got, reference.knn_bruteforce(q, keys, 5, metric), metric)


def test_certified_overflow_falls_back_exactly():
    """600 exact copies of one key (more than the 4k + 256 candidate budget, ties even in
    float64): bf16 and float64 passes overflow, the brute force returns the lowest indices."""
    x = torch.cat([torch.randn(50, 16), torch.ones(600, 16), torch.randn(50, 16)])
    q = torch.ones(2, 16) + 1e-3
    v, i = knn_mod.CertifiedKeys(x, "l2").search(q, 5, 1 << 12)
    assert i.tolist() == [[50, 51, 52, 53, 54]] * 2
    _assert_knn((v, i), reference.knn_bruteforce(q, x, 5), "l2")


@pytest.mark.parametrize("triton", [False, True])
def test_certified_uint8_int8_pass(triton):
    """uint8 keys: the exact int8 pass (Triton int32 dot, or its float64 torch twin), with
    an exact duplicate key; few candidates survive the (float32 epilogue) bound."""
    if triton and not TRITON_ON_CPU:
        pytest.skip("needs TRITON_INTERPRET=1 and triton on CPU")
    fn = knn_mod._triton_bound_tile if triton else None
    g = torch.Generator().manual_seed(8)
    x = torch.randint(0, 256, (300, 48), generator=g, dtype=torch.uint8)
    x = torch.cat([x, x[:20]])
    q = torch.cat([x[:3], torch.randint(0, 256, (4, 48), generator=g, dtype=torch.uint8)])
    for metric in ("l2", "ip", "cosine"):
        got = knn_mod.CertifiedKeys(x, metric, score_fn=fn).search(q, 4, 1 << 12)
        want = reference.knn_bruteforce(q.double(), x.double(), 4, metric)
        _assert_knn_up_to_duplicates(got, want, x, metric)
    centre = torch.full((48,), 128.0)
    keys = cert.prepare_keys(x, centre, "l2", torch.int8)
    cand, over = cert.candidates(q, keys, 4, "l2", 1 << 12, 300, torch.int8,
                                 fn or cert.torch_bound_tile, centre)
    assert not bool(over.any()) and int((cand >= 0).sum(1).max()) <= 8


@pytest.mark.skipif(not TRITON_ON_CPU, reason="needs TRITON_INTERPRET=1 and triton on CPU")
def test_triton_bound_tile_interpreted_matches_torch():
    from pydiffgen.kernels.knn_bound_tile import bound_tile

    g = torch.Generator().manual_seed(9)
    qg = torch.randn(37, 70, generator=g).bfloat16()
    xg = torch.randn(45, 70, generator=g).bfloat16()
    vec = [torch.rand(n, generator=g) for n in (45, 45, 45, 37, 37)]
    consts = dict(w=2.0, cg=1e-6, ca=1e-6, eta=1e-30, safety=1.0 + 1e-6)
    lo, hi = bound_tile(qg, xg, *vec, **consts)
    lo2, hi2 = cert.torch_bound_tile(qg, xg, *vec, *consts.values())
    torch.testing.assert_close(lo, lo2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hi, hi2, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not TRITON_ON_CPU, reason="needs TRITON_INTERPRET=1 and triton on CPU")
def test_triton_certified_near_duplicates_interpreted():
    g = torch.Generator().manual_seed(10)
    base = torch.rand(40, 33, generator=g) * 2 - 1
    keys = torch.cat([base, base * (1 + 1e-7 * torch.randn(base.shape, generator=g))])
    q = keys[[1, 41, 79]].clone()
    got = knn_mod.CertifiedKeys(keys, "l2", score_fn=knn_mod._triton_bound_tile).search(
        q, 3, 1 << 12)
    _assert_knn(got, reference.knn_bruteforce(q, keys, 3), "l2")


@pytest.mark.gpu
def test_knn_gpu_uint8_and_near_ties():
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, 256, (20000, 3 * 16 * 16), device="cuda", generator=g,
                      dtype=torch.uint8)
    q = x[:64].clone()
    got = knn(q, x, 10)
    want = reference.knn_bruteforce(q.cpu().double(), x.cpu().double(), 10)
    assert torch.equal(got[1].cpu(), want[1])
    D = 256
    qf = torch.randn(4, D, device="cuda", dtype=torch.float64)
    dirs = torch.nn.functional.normalize(torch.randn(3000, D, device="cuda",
                                                     dtype=torch.float64), dim=1)
    keys = torch.cat([qf[i] + dirs * (1 + 1e-7 * torch.rand(3000, 1, device="cuda",
                                                             dtype=torch.float64))
                      for i in range(4)]).float()
    got = knn(qf.float(), keys, 8)
    want = reference.knn_bruteforce(qf.float().cpu(), keys.cpu(), 8)
    assert torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_cosine_zero_vectors(backend, tmp_path):
    """cos(0, x) = cos(q, 0) = 0: a zero key ranks by 0, a zero query ties with every key
    and gets the k lowest indices, as the float64 brute force."""
    torch.manual_seed(0)
    x = torch.randn(50, 7)
    x[3] = 0
    x[17] = 0
    q = torch.cat([torch.randn(3, 7), torch.zeros(1, 7), -x[:2]])
    got_v, got_i = knn(q, x, 50, "cosine", backend=backend)
    want_v, want_i = reference.knn_bruteforce(q, x, 50, "cosine")
    assert torch.equal(got_i, want_i)
    torch.testing.assert_close(got_v, want_v.float())
    assert torch.equal(got_i[3], torch.arange(50)) and bool((got_v[3] == 0).all())
    path = tmp_path / "keys.npy"
    np.save(path, x.numpy())
    got_i = knn(q, path, 50, "cosine", backend=backend, chunk_bytes=13 * 7 * 4)[1]
    assert torch.equal(got_i, want_i)
