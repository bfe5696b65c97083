"""Exactness of pydiffgen.ops.empirical_denoiser (docs/science.md#empirical-optimum-numerics):
every backend within 1e-6 relative of a float64 softmax at 64 log-spaced σ in [0.002, 80]
on digits midpoints (two training images at equal distance), duplicated training rows,
large-norm data and odd sizes; and the sharded reduction (one gloo rank) likewise."""

import math

import pytest
import torch

from pydiffgen import _native, distributed
from pydiffgen.data.builtin import digits
from pydiffgen.kernels import TRITON_WHY_NOT, interpreted
from pydiffgen.ops import empirical as E
from pydiffgen.ops import empirical_denoiser, lse

SIGMAS = torch.logspace(math.log10(0.002), math.log10(80), 64, dtype=torch.float64)
TOL = 1e-6
HAVE_CPP = _native.cpu_why_not("empirical_denoiser") is None
TRITON_ON_CPU = TRITON_WHY_NOT is None and interpreted()


def softmax64(y, x, sig):
    """The dense float64 softmax over direct differences, [M, D]."""
    d2 = ((y.double()[:, None, :] - x.double()[None]) ** 2).sum(-1)  # [M, N]
    return torch.softmax(-d2 / (2 * sig.double()[:, None] ** 2), dim=1) @ x.double()


def rel_error(got, ref):
    assert got.dtype == torch.float32
    return float(((got.double() - ref).norm(dim=1) / ref.norm(dim=1)).max())


def backends():
    return [pytest.param("reference"),
            pytest.param("cpp", marks=pytest.mark.skipif(not HAVE_CPP, reason="no C++ op")),
            pytest.param("triton", marks=pytest.mark.skipif(not TRITON_ON_CPU,
                                                            reason="no Triton interpreter"))]


def run(backend, y, x, sig):
    if backend == "triton":  # interpreted on the CPU: the op's own corrected path
        return E._triton(y, x, sig)
    return empirical_denoiser(y, x, sig, backend)


def _digits():
    return digits()[0].reshape(-1, 64).float()


def _cases(x):
    """(name, y [64, D], train, σ [64]): the midpoint of digits 4 and 14 at every σ, and
    other midpoints, over plain, duplicated and large-norm training sets."""
    g = torch.Generator().manual_seed(0)
    pairs = torch.cat([torch.tensor([[4, 14]]), torch.randint(0, len(x), (63, 2), generator=g)])
    mid = (x[pairs[:, 0]] + x[pairs[:, 1]]) / 2  # [64, D]
    mid4 = ((x[4] + x[14]) / 2).expand(64, -1)
    dup = torch.cat([x, x[: len(x) // 2]])
    return [("digits-4-14", mid4, x, SIGMAS), ("digits-midpoints", mid, x, SIGMAS.flip(0)),
            ("duplicated", mid, dup, SIGMAS), ("large-norm", mid4 * 100 + 50, x * 100 + 50,
                                                SIGMAS),
            ("large-norm-scaled-sigma", mid * 100 + 50, x * 100 + 50, SIGMAS * 100)]


@pytest.mark.parametrize("backend", backends())
def test_equidistant_pairs_every_sigma(backend):
    x = _digits()
    if backend == "triton":
        x = x[:200]  # the interpreter is slow
    for name, y, train, sig in _cases(x):
        got = run(backend, y, train, sig)
        assert rel_error(got, softmax64(y, train, sig)) <= TOL, name


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("M,N,D", [(1, 1, 1), (7, 3, 5), (1, 127, 64), (7, 127, 5),
                                   (7, 1, 64), (1, 3, 64), (7, 127, 1)])
def test_odd_sizes_every_sigma(backend, M, N, D):
    g = torch.Generator().manual_seed(M * 1000 + N * 10 + D)
    x = torch.rand(N, D, generator=g) * 2 - 1
    x[N // 2 :] = x[: N - N // 2].clone()  # duplicated rows
    y = (x[torch.arange(M) % N] + x[torch.arange(1, M + 1) % N]) / 2
    y = y + 0.01 * torch.randn(M, D, generator=g)
    for sig in SIGMAS.split(M if backend != "triton" else max(M, 7) * 2):
        rows = torch.arange(len(sig)) % M
        got = run(backend, y[rows], x, sig)
        assert rel_error(got, softmax64(y[rows], x, sig)) <= TOL, (float(sig[0]))


def test_sharded_reduction_is_exact(tmp_path):
    """distributed's own reduction (certification, candidates, float64 pass) on one gloo
    rank, which ``distributed.empirical_denoiser`` would hand to the one-process op."""
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        for name, y, train, sig in _cases(_digits()):
            got = distributed._sharded_denoise(y, train, sig, None).float()
            assert rel_error(got, softmax64(y, train, sig)) <= TOL, name
    finally:
        torch.distributed.destroy_process_group()


def test_candidate_pass_keeps_every_point_that_may_carry_weight():
    """Bound 4 of ops.lse: every point the bf16 pass omits from a row it does not leave
    dense has a float64 logit below the row's largest minus MARGIN + log N; R bounds
    every ‖x_i − μ‖."""
    for name, y, train, sig in _cases(_digits()):
        rows, cols, dense, mu, R = lse.candidate_pass(y, lse.Keys(train), sig, cap=len(train))
        d2 = ((y.double()[:, None] - train.double()[None]) ** 2).sum(-1)  # [M, N]
        logit = -d2 / (2 * sig[:, None] ** 2)
        kept = torch.zeros_like(logit, dtype=torch.bool)
        kept[rows, cols] = True
        gap = logit.max(1, keepdim=True).values - logit
        safe = kept | (gap > lse.MARGIN + math.log(len(train))) | dense[:, None]
        assert bool(safe.all()), name
        small = sig < 50 * sig.min()  # σ ≤ 0.1 on [-1, 1] digits (×100 on the scaled case)
        assert not bool(dense[small].any()), name  # a sparse softmax: no dense pass
        assert R >= float((train.double() - mu.double()).norm(dim=1).max()), name


def test_index_is_exact_and_reused_across_sigmas():
    """ops.EmpiricalIndex: one prepared training set (held bf16 keys) answers every σ of
    every case within 1e-6, float32 and float64 queries alike, as the one-call op."""
    from pydiffgen.ops import EmpiricalIndex

    for name, y, train, sig in _cases(_digits()):
        index = EmpiricalIndex(train)
        assert index.keys is not None and index.keys.held is not None
        for s in sig.split(16):
            rows = torch.arange(len(s)) % len(y)
            want = softmax64(y[rows], train, s)
            assert rel_error(index(y[rows], s), want) <= TOL, name
            got64 = index(y[rows].double(), s)
            assert got64.dtype == torch.float64
            assert float(((got64 - want).norm(dim=1) / want.norm(dim=1)).max()) <= TOL, name


def test_dense_boundary_random_large_norm():
    """Around the σ where rows turn dense (the sample-spread test, then the candidate cap),
    on random odd-sized data far from the origin with duplicates: every row within 1e-6,
    rows on both sides of the boundary in one call, by the op and by an index."""
    from pydiffgen.ops import EmpiricalIndex

    g = torch.Generator().manual_seed(3)
    x = torch.rand(1001, 37, generator=g) * 2 - 1
    x[500:700] = x[:200].clone()
    y = x[torch.arange(96) % 1001] + 0.3 * torch.randn(96, 37, generator=g)
    for shift in (0.0, 1000.0):
        xs, ys = x + shift, y + shift
        sig = torch.logspace(-1.5, 1.0, 96, dtype=torch.float64)  # sparse → dense within
        _, _, _, dense, _ = lse.sparse_partials(ys, xs, sig)
        assert bool(dense.any()) and not bool(dense.all())
        want = softmax64(ys, xs, sig)
        assert rel_error(empirical_denoiser(ys, xs, sig), want) <= TOL, shift
        assert rel_error(EmpiricalIndex(xs)(ys, sig), want) <= TOL, shift


def test_cpp_dense_pass_upcasts_float32_train():
    """The C++ float64 dense pass takes a float32 training set (tile-by-tile upcast, no
    float64 copy) and gives what the float64 copy gives, to float64 rounding."""
    if not HAVE_CPP:
        pytest.skip("no C++ op")
    g = torch.Generator().manual_seed(5)
    x = torch.rand(9001, 33, generator=g) * 2 - 1 + 7
    y = (x[:13] + 2 * torch.randn(13, 33, generator=g)).double()
    sig = torch.logspace(-0.5, 1.5, 13, dtype=torch.float64)
    a, _ = torch.ops.pydiffgen.empirical_denoiser(y, x, sig)
    b, _ = torch.ops.pydiffgen.empirical_denoiser(y, x.double(), sig)
    assert float((a - b).abs().max()) <= 1e-12 * float(b.abs().max())
    assert float(((a - softmax64(y, x, sig)).norm(dim=1)).max()) <= 1e-10


def test_index_exact_rows_search_one_held_knn_index(monkeypatch):
    """The exact rows of the float64 pass (bound 2: the kNN candidates of rows the logit
    error bound does not certify, here a tight cluster at σ below its spread) search the
    kNN index an EmpiricalIndex holds: built on its first use, never again over later
    calls and σ's, with the results of the one-call op, which prepares one per call."""
    from pydiffgen.ops import EmpiricalIndex
    from pydiffgen.ops.knn import KnnIndex

    built = []
    of_rows = KnnIndex.of_rows.__func__

    def counted(cls, x, *args, **kwargs):
        built.append(len(x))
        return of_rows(cls, x, *args, **kwargs)

    monkeypatch.setattr(KnnIndex, "of_rows", classmethod(counted))
    g = torch.Generator().manual_seed(1)
    base = torch.rand(41, 18, generator=g) * 2 - 1
    x = torch.cat([base[0] + 3e-4 * torch.randn(150, 18, generator=g), base[1:]])
    y = base[0] + 3e-4 * torch.randn(5, 18, generator=g)
    sigmas = [torch.full((5,), s, dtype=torch.float64) for s in (3e-4, 5e-4, 4e-4)]
    want = [empirical_denoiser(y, x, s) for s in sigmas]
    assert len(built) == len(sigmas)  # the op: one kNN index per call, each needed
    built.clear()
    index = EmpiricalIndex(x)
    for _ in range(2):
        for s, w in zip(sigmas, want, strict=True):
            got = index(y, s)
            assert torch.equal(got, w)
            assert rel_error(got, softmax64(y, x, s)) <= TOL
    # float64 queries search the float32 rows' held index: the one-call op's result
    assert torch.equal(index(y.double(), sigmas[0]), empirical_denoiser(y.double(), x, sigmas[0]))
    assert built == [len(x), len(x)]  # the index's one kNN index, then the op's own
    assert index.keys.index is not None
