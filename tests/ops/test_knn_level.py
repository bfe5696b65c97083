"""The cpp backend's level decomposition (each prepared row is x̂ = m·1 + r̃: its mean
level m scored in float32, the residual rounded for the GEMM, csrc/cpu/knn.cpp): exactly
the float64 neighbours, ties to the lower index, on data where the level dominates (image
rows), where it is all there is (constant rows), duplicate keys, odd sizes, every metric
and precision; and the pass keeps few candidates on such data (the point of the level)."""

import importlib

import pytest
import torch

from pydiffgen.ops import KnnIndex, dispatch, knn, reference

knn_mod = importlib.import_module("pydiffgen.ops.knn")
CPP = dispatch.op("knn").reasons("cpu").get("cpp") == "ok"
pytestmark = pytest.mark.skipif(not CPP, reason="pydiffgen._C (cpp backend) is not built")
PRECISIONS = ["auto", "int8", "bf16", "fp32", "fp64"]


def _assert_exact(got, q, x, k, metric):
    want_v, want_i = reference.knn_bruteforce(q, x, k, metric)
    assert torch.equal(got[1], want_i), (got[1], want_i)
    torch.testing.assert_close(got[0], want_v.float(), rtol=1e-6, atol=1e-6)


def _levelled(n, D, g, spread=0.05):
    """Rows with a large random level per row and a small residual (image-like)."""
    return torch.rand(n, 1, generator=g) * 4 - 2 + spread * torch.randn(n, D, generator=g)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_levelled_rows_odd_sizes(precision, metric):
    g = torch.Generator().manual_seed(31)
    x = _levelled(1001, 37, g)
    q = torch.cat([_levelled(12, 37, g), x[:1] + 1e-4])  # one query next to a key
    index = KnnIndex(x, metric, "cpp", precision=precision)
    for k in (1, 9, 130):  # k beyond one block of 64 scores
        _assert_exact(index.search(q, k, tile_elems=2000), q, x, k, metric)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_constant_and_duplicate_rows(precision, metric):
    """Rows that are all level (residual 0), repeated keys (exact ties: lower index first)
    and a zero row."""
    g = torch.Generator().manual_seed(32)
    levels = torch.linspace(-3, 3, 25)
    x = torch.cat([levels[:, None].expand(25, 48), _levelled(40, 48, g), torch.zeros(1, 48)])
    x = torch.cat([x, x[::3]])  # duplicates after their originals
    q = torch.cat([levels[::4, None].expand(7, 48) + 0.01, _levelled(6, 48, g),
                   torch.zeros(1, 48)])
    got = knn(q, x, 11, metric, "cpp", precision=precision)
    _assert_exact(got, q, x, 11, metric)


def test_digits_with_a_brightness_offset():
    """Real 8×8 digits (integer levels: many exact ties) with a per-image brightness offset,
    as photographs have: the same neighbours as float64, ties to the lower index."""
    from sklearn.datasets import load_digits

    g = torch.Generator().manual_seed(33)
    d = torch.tensor(load_digits().data, dtype=torch.float32)  # [1797, 64], values 0..16
    x = d + torch.randint(0, 3, (len(d), 1), generator=g).float() * 40
    q = x[::97] + torch.tensor([0.0, 0.5]).repeat(32)  # half-integer shifts: more ties
    for metric in ("l2", "cosine", "ip"):
        _assert_exact(knn(q, x, 10, metric, "cpp"), q, x, 10, metric)


@pytest.mark.parametrize("precision", [4, 1])  # q8, bf16
def test_level_keeps_few_candidates(precision):
    """On levelled rows the rounding error scales with the residual, not the level: the
    certified pass keeps close to k candidates per query and none overflows."""
    g = torch.Generator().manual_seed(34)
    x = _levelled(4000, 256, g, spread=0.02)
    q = _levelled(20, 256, g, spread=0.02)
    mu = x.mean(0)
    keys = torch.ops.pydiffgen.knn_prepare(x, mu, 0, precision)
    assert keys[-1].shape == (4000, 3)  # level (m, S, σ) per key
    cand, _, _, over = torch.ops.pydiffgen.knn_candidates(
        q, *keys, mu, 5, 0, precision, 1 << 20, 2000, 0)
    assert not bool(over.any())
    assert float((cand >= 0).sum(1).float().mean()) < 60
    _assert_exact(knn(q, x, 5, "l2", "cpp"), q, x, 5, "l2")


def test_all_keys_in_one_tile_and_k_equal_n():
    g = torch.Generator().manual_seed(35)
    x = _levelled(70, 300, g)
    q = _levelled(5, 300, g)
    for k in (1, 70):
        _assert_exact(knn(q, x, k, "l2", "cpp"), q, x, k, "l2")


def test_k_beyond_one_key_tile():
    """D = 20000: key tiles of 256 rows (csrc/cpu/knn.cpp), k = 300 spans two of them."""
    g = torch.Generator().manual_seed(36)
    x = _levelled(400, 20000, g)
    q = _levelled(3, 20000, g)
    _assert_exact(knn(q, x, 300, "l2", "cpp"), q, x, 300, "l2")
