"""deduplicate: the paper's |correlation| > 0.95 rule, streamed in chunks."""

import pytest
import torch
import torch.nn.functional as F

import pydiffgen.data.dedup as dedup_module
from pydiffgen.data import correlation_features, deduplicate
from pydiffgen.errors import InputError


def _brute_force(x, threshold=0.95, pool=20):
    """Reference: full N×N |correlation| in float64 and a plain greedy pass."""
    f = x.double()
    if f.shape[-1] >= pool and f.shape[-2] >= pool:
        f = F.adaptive_avg_pool2d(f, pool)
    f = f.reshape(len(f), -1)
    f = f - f.mean(1, keepdim=True)
    f = f / f.norm(dim=1, keepdim=True)
    corr = (f @ f.T).abs()
    kept = []
    for i in range(len(f)):
        if all(corr[i, j] <= threshold for j in kept):
            kept.append(i)
    return kept


def _with_correlation(x, c, gen):
    """An image whose centred version has correlation exactly c with centred x [C, H, W]."""
    u = x.double().flatten()
    u = u - u.mean()
    u = u / u.norm()
    v = torch.randn(u.shape, generator=gen, dtype=torch.float64)
    v = v - v.mean()
    v = v - (v @ u) * u
    v = v / v.norm()
    return (c * u + (1 - c**2) ** 0.5 * v).reshape(x.shape).float() * 0.3


def test_copies_negations_and_near_copies_are_dropped():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(10, 1, 8, 8, generator=gen) * 2 - 1  # 8 < pool: used as is
    extra = [
        base[2].clone(),                          # exact copy
        -base[4],                                 # negated copy
        0.5 * base[6] + 0.2,                      # same image, other contrast and brightness
        _with_correlation(base[7], 0.99, gen),    # near copy
        _with_correlation(base[8], -0.99, gen),   # near negated copy
        _with_correlation(base[9], 0.90, gen),    # similar, but below the threshold
    ]
    x = torch.cat([base, torch.stack(extra)])
    kept, index = deduplicate(x, return_index=True)
    assert index.tolist() == list(range(10)) + [15]
    assert index.dtype == torch.int64
    assert torch.equal(kept, x[index])


def test_earlier_image_is_kept():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 16, 16, generator=gen)
    x[1] = x[4]
    _, index = deduplicate(x, return_index=True)
    assert index.tolist() == [0, 1, 2, 3, 5]


def test_distinct_images_all_kept():
    x = torch.rand(200, 1, 24, 24) * 2 - 1
    assert torch.equal(deduplicate(x), x)


def test_constant_images_do_not_produce_nan():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(6, 1, 10, 10, generator=gen)
    x[1] = 0.0
    x[3] = 0.7  # a different constant: the same zero signal once the mean is removed
    feats = correlation_features(x)
    assert bool(torch.isfinite(feats).all())
    _, index = deduplicate(x, return_index=True)
    assert index.tolist() == [0, 1, 2, 4, 5]


@pytest.mark.parametrize("size", [8, 24])
def test_matches_brute_force_for_every_chunk_size(size):
    gen = torch.Generator().manual_seed(3)
    base = torch.rand(120, 1, size, size, generator=gen) * 2 - 1
    # plant near-duplicates on both sides of the threshold, at random later positions
    near = torch.stack([_with_correlation(base[i], c, gen)
                        for i, c in zip(range(0, 60, 2), torch.linspace(0.9, 0.999, 30))])
    x = torch.cat([base, near, -base[:10], base[50:60] + 0.1])
    x = x[torch.randperm(len(x), generator=gen)]
    want = _brute_force(x)
    assert 0 < len(x) - len(want) < len(x)  # the set really has duplicates to find
    for chunk_size in (3, 16, 64, 1000):
        _, index = deduplicate(x, return_index=True, chunk_size=chunk_size)
        assert index.tolist() == want, f"chunk_size={chunk_size}"


def test_threshold_and_pool_options():
    gen = torch.Generator().manual_seed(4)
    a = torch.rand(1, 8, 8, generator=gen)
    b = _with_correlation(a, 0.9, gen)
    x = torch.stack([a, b])
    assert len(deduplicate(x)) == 2
    assert len(deduplicate(x, threshold=0.85)) == 1
    # two images equal after 2×2 pooling differ only in detail the pool removes
    c = torch.rand(1, 1, 4, 4, generator=gen)
    up = c.repeat_interleave(2, -1).repeat_interleave(2, -2)
    checker = (torch.arange(8)[:, None] + torch.arange(8)) % 2 * 0.4
    y = torch.cat([up, up + checker])
    assert len(deduplicate(y, pool=8)) == 2
    assert len(deduplicate(y, pool=4)) == 1


def test_chunked_queries_stay_small(monkeypatch):
    seen = []
    real_knn = dedup_module.knn

    def spy(queries, keys, k, metric):
        seen.append(len(queries))
        return real_knn(queries, keys, k, metric=metric)

    monkeypatch.setattr(dedup_module, "knn", spy)
    x = torch.rand(500, 1, 8, 8)
    deduplicate(x, chunk_size=50)
    assert seen and max(seen) <= 2 * 50  # each chunk and its negation, never all N


def test_bad_arguments():
    x = torch.rand(4, 1, 8, 8)
    with pytest.raises(InputError, match="threshold"):
        deduplicate(x, threshold=1.5)
    with pytest.raises(InputError, match="chunk_size"):
        deduplicate(x, chunk_size=0)
    with pytest.raises(InputError, match="floating"):
        deduplicate(torch.zeros(4, 1, 8, 8, dtype=torch.int64))
