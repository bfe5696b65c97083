"""Helpers of pydiffgen.distributed that need no second process."""

import pytest
import torch

from pydiffgen import distributed, ops
from pydiffgen.errors import ConfigError, InputError
from pydiffgen.ops import lse, reference


@pytest.mark.parametrize("n", [0, 1, 7, 10, 1025])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shard_covers_every_row_once_in_rank_order(n, world):
    ranges = [distributed.shard(n, r, world) for r in range(world)]
    assert [i for r in ranges for i in r] == list(range(n))
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shard_rejects_bad_arguments():
    with pytest.raises(InputError, match="rank"):
        distributed.shard(10, 2, 2)
    with pytest.raises(InputError, match="n must be an integer"):
        distributed.shard(1.5, 0, 1)


def test_single_process_fallbacks(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.init() == (0, 1)
    assert distributed.is_main() and distributed.world_size() == 1 and not distributed.launched()
    distributed.barrier()
    assert distributed.run_on_main(lambda: 41 + 1) == 42
    q, x = torch.randn(5, 7), torch.randn(11, 7)
    v, i = distributed.knn(q, x, 3, offset=100)
    v0, i0 = ops.knn(q, x, 3)
    assert torch.equal(v, v0) and torch.equal(i, i0 + 100)
    assert torch.equal(distributed.empirical_denoiser(q, x, 0.7), ops.empirical_denoiser(q, x, 0.7))


def test_init_names_missing_launcher_variables(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ConfigError, match="MASTER_PORT"):
        distributed.init()


@pytest.mark.parametrize("sigma", [0.05, 0.7, 5.0])
def test_partials_of_disjoint_sets_merge_to_the_empirical_denoiser(sigma):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(67, 13, generator=g) * 2 - 1
    y = x[:9] + sigma * torch.randn(9, 13, generator=g)
    sig = torch.full((9,), sigma, dtype=torch.float64)
    exact = reference.empirical_denoiser(y, x, sig)
    # m is the true largest logit and m + log s the log-partition function
    d2 = (y[:, None].double() - x[None].double()).square().sum(-1)
    m, s, a, err = lse.partials(y, x, sig)
    # (to within err, the estimated float32 logit error)
    assert bool(((m - (-d2 / (2 * sigma**2)).max(1).values).abs() <= err).all())
    assert bool(((m + s.log() - torch.logsumexp(-d2 / (2 * sigma**2), 1)).abs() <= err).all())
    parts = [lse.partials(y, part, sig) for part in (x[:0], x[:20], x[20:])]
    m_star = torch.stack([p[0] for p in parts]).max(0).values
    w = [torch.exp(p[0] - m_star) for p in parts]
    total = sum(p[1] * wi for p, wi in zip(parts, w))
    merged = sum(p[2] * wi[:, None] for p, wi in zip(parts, w)) / total[:, None]
    torch.testing.assert_close(merged, exact, rtol=2e-6, atol=2e-6)
    # the candidate partials: exact when every point is a candidate
    mc, sc, ac, c = lse.candidate_partials(y, x, sig, C=67)
    torch.testing.assert_close(ac / sc[:, None], exact, rtol=1e-12, atol=1e-12)
    assert bool(torch.isinf(c).all())
