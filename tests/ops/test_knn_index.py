"""KnnIndex (keys prepared once, many searches) and the int8 (q8) candidate pass: exactly the
float64 neighbours, ties to the lower index, on every metric and backend; data with many
exact ties (8×8 digits, values 0..16), clustered data where the re-rank's early stop
skips most candidates, and data where it must skip none."""

import importlib

import pytest
import torch

from pydiffgen.errors import InputError
from pydiffgen.ops import KnnIndex, dispatch, knn, reference

knn_mod = importlib.import_module("pydiffgen.ops.knn")
CPU_BACKENDS = [name for name, why in dispatch.op("knn").reasons("cpu").items()
                if not why.startswith("does not")]
CPP = dispatch.op("knn").reasons("cpu").get("cpp") == "ok"
needs_cpp = pytest.mark.skipif(not CPP, reason="pydiffgen._C (cpp backend) is not built")
PRECISIONS = ["auto", "int8", "bf16", "fp32", "fp64"]


def _assert_exact(got, q, x, k, metric):
    want_v, want_i = reference.knn_bruteforce(q, x, k, metric)
    assert torch.equal(got[1], want_i), (got[1], want_i)
    torch.testing.assert_close(got[0], want_v.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_index_matches_bruteforce_odd_sizes(backend, precision, metric):
    g = torch.Generator().manual_seed(11)
    x = torch.randn(517, 3, 5, 7, generator=g) + 0.4
    index = KnnIndex(x, metric, backend, precision=precision)
    for M, k in ((1, 1), (13, 5), (70, 33)):
        q = torch.randn(M, 3, 5, 7, generator=g)
        _assert_exact(index.search(q, k, tile_elems=3000), q, x, k, metric)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_index_reuse_prepares_keys_once(backend):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(900, 40, generator=g)
    index = KnnIndex(x, backend=backend)
    assert len(index) == 900 and index.feature_shape == (40,)
    first = None
    for _ in range(3):
        q = torch.randn(25, 40, generator=g)
        got = index.search(q, 7)
        _assert_exact(got, q, x, 7, "l2")
        assert torch.equal(got[1], knn(q, x, 7, backend=backend)[1])
        keys = index.prepared[0]  # the backend's prepared keys (no rescaling)
        first = first or (keys, dict(keys.prepared))
        assert keys is first[0]  # one preparation, reused by every batch
        assert all(keys.prepared[p] is v for p, v in first[1].items())


@needs_cpp
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_digits_many_equidistant_pairs(metric, precision):
    """8×8 digits hold integer values 0..16: many keys at exactly equal distances from a
    query (and duplicates); the order must be the float64 one, ties to the lower index."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float32)  # [1797, 64]
    q = torch.cat([x[:40], x[100:140].round() + 1.0])
    for k in (1, 10, 50):
        got = knn(q, x, k, metric, backend="cpp", precision=precision)
        _assert_exact(got, q, x, k, metric)
    # 8-bit copies of the same values: the exact int8 pass
    got = knn(q.to(torch.uint8), x.to(torch.uint8), 10, metric, backend="cpp")
    _assert_exact(got, q.double(), x.double(), 10, metric)


@needs_cpp
def test_q8_pass_rows_with_outliers_and_zeros():
    """One huge entry per row makes the int8 scale coarse (wide bounds, many candidates);
    zero rows and tiny rows get no normal scale: still exact."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(700, 96, generator=g)
    x[::7, 3] = 1e4
    x[5] = 0
    x[9] = 1e-30
    q = torch.cat([x[:6] + 1e-4 * torch.randn(6, 96, generator=g),
                   torch.randn(10, 96, generator=g)])
    for metric in ("l2", "cosine", "ip"):
        got = knn(q, x, 9, metric, backend="cpp", precision="int8", tile_elems=5000)
        _assert_exact(got, q, x, 9, metric)


@needs_cpp
def test_rerank_early_stop_on_clustered_data():
    """Tight clusters far apart: the certified lower bounds put one cluster's keys first,
    and the re-rank stops before the others; the answer equals the full re-rank."""
    g = torch.Generator().manual_seed(14)
    centres = torch.randn(20, 64, generator=g) * 50
    x = (centres[:, None] + torch.randn(20, 60, 64, generator=g)).reshape(-1, 64)
    q = centres[torch.arange(0, 20, 3)] + torch.randn(7, 64, generator=g)
    mu = x.mean(0)
    cand, lower, _, over = torch.ops.pydiffgen.knn_candidates(
        q, *torch.ops.pydiffgen.knn_prepare(x, mu, 0, 4), mu, 5, 0, 4, 1 << 20, 2000, 0)
    assert not bool(over.any()) and int((cand >= 0).sum(1).min()) > 5  # some to skip
    full = torch.ops.pydiffgen.knn_rerank(q, x, cand, 5, 0)
    early = torch.ops.pydiffgen.knn_rerank(q, x, cand, 5, 0, lower, mu)
    assert torch.equal(full[1], early[1]) and torch.equal(full[0], early[0])
    _assert_exact(knn(q, x, 5, backend="cpp", precision="int8"), q, x, 5, "l2")


@needs_cpp
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_rerank_early_stop_must_not_prune_ties(metric):
    """300 exact copies of one key, all at the k-th distance: no lower bound exceeds it,
    so nothing may be skipped; the k lowest indices win the tie."""
    g = torch.Generator().manual_seed(15)
    x = torch.cat([torch.randn(40, 32, generator=g) + 5, torch.ones(300, 32),
                   torch.randn(40, 32, generator=g) + 5])
    q = torch.ones(3, 32) * 1.001
    for precision in ("int8", "bf16"):
        got = knn(q, x, 6, metric, backend="cpp", precision=precision)
        _assert_exact(got, q, x, 6, metric)
        assert got[1][:, :6].tolist() == [list(range(40, 46))] * 3


def test_index_errors():
    x = torch.randn(10, 4, 2)
    index = KnnIndex(x)
    with pytest.raises(InputError, match="feature shape"):
        index.search(torch.randn(3, 8), 2)
    with pytest.raises(InputError, match="exceeds the number of keys"):
        index.search(torch.randn(3, 4, 2), 11)
    with pytest.raises(InputError, match="NaN or Inf"):
        index.search(torch.full((3, 4, 2), float("inf")), 2)
    with pytest.raises(InputError, match="NaN or Inf"):
        KnnIndex(torch.full((3, 4), float("nan")))
    with pytest.raises(InputError, match="metric must be one of"):
        KnnIndex(x, "hamming")
    with pytest.raises(InputError, match="floating-point or uint8"):
        KnnIndex(torch.randint(0, 3, (5, 4)))
    with pytest.raises(InputError, match="one device"):
        index.search(torch.randn(3, 4, 2, device="meta"), 2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_index_extreme_magnitudes_and_mixed_dtypes(backend):
    """Keys near 1e15 (rescaled per search) and uint8 keys searched by float queries."""
    g = torch.Generator().manual_seed(16)
    x = torch.randn(300, 24, generator=g, dtype=torch.float64) * 1e15
    q = torch.randn(8, 24, generator=g, dtype=torch.float64) * 1e15
    index = KnnIndex(x, backend=backend)
    for _ in range(2):
        got_i = index.search(q, 4)[1]
        assert torch.equal(got_i, reference.knn_bruteforce(q, x, 4)[1])
    x8 = torch.randint(0, 256, (400, 30), generator=g, dtype=torch.uint8)
    q8 = torch.rand(5, 30, generator=g) * 255
    index = KnnIndex(x8, backend=backend)
    assert torch.equal(index.search(q8, 6)[1], reference.knn_bruteforce(q8, x8.float(), 6)[1])
    assert torch.equal(index.search(x8[:5], 6)[1],
                       reference.knn_bruteforce(x8[:5].float(), x8.float(), 6)[1])
