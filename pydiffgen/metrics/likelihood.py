"""Feature Likelihood Divergence (Jiralerspong et al., NeurIPS 2023) on exact neighbours.

FLD models the generated distribution as a mixture of isotropic Gaussians centred at the
generated features g_j [M, F], p(x) = (1/M) Σ_j N(x; g_j, σ_j² I), fits each bandwidth σ_j
by maximum likelihood on the *training* features, and scores the *test* features:
  nll(X) = −(1/F) mean_x log p(x),   FLD = 100 · (nll(test) − nll_baseline),
where the baseline is the same model centred at min(M, N/2) training points, fitted on the
other training points (what a model that generalizes perfectly reaches). A memorizing
model places components on training points: σ_j shrinks, train likelihood soars and test
likelihood falls. Features are first standardized by the test set's mean and std.

Also returned: the train/test gap 100 · (nll(train) − nll(test)) (≪ 0: memorized), and
each generated sample's memorization score, the largest dimension-adjusted log-density
its component gives a training point: (−d²/(2σ_j²) − (F/2) log 2πσ_j²)/F, d its
nearest-train distance.

Differences from the reference code (marcojira/fld), all for scale (no M × N matrix):
- each point's mixture is truncated to its ``neighbours`` nearest centres (exact kNN):
  log p(x) ≈ log (1/M) Σ_{j ∈ kNN(x)} N(x; g_j, σ_j²) — exact when neighbours ≥ M, and
  the dropped far components carry ≤ exp(−Δ) of the mass when bandwidths are comparable;
- the bandwidths are fitted by EM (weights fixed at 1/M, σ_j² ← Σ_i r_ij d_ij² / (F Σ_i
  r_ij), ``iters`` steps, a monotone ascent of the same likelihood) instead of 50 epochs
  of Adam, from the reference's start log σ_j² = log((min_i d_ij² + 10⁻³)/F) and with its
  clamp log σ² ∈ [−40, 20]; a component no point sees keeps its start value;
- the reference's extra component at the training mean (a fitting aid that is dropped
  at evaluation) and its subsampling of gen to 10,000 are left out;
- a feature with zero test std is left unscaled (the reference divides by 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch

from .._checks import check_positive_int
from ..ops.exact import score64
from ..ops.knn import search
from .bootstrap import confidence_interval
from .inputs import agree, as_features

LOG_VAR_RANGE = (-40.0, 20.0)


@dataclass(frozen=True)
class FLD:
    """fld (the score; lower is better, ≈ 0 matches the baseline), test_nll, train_nll and
    baseline_nll (dimension-adjusted mean NLLs), gap = 100·(train_nll − test_nll),
    memorization [M] per generated sample, log_var [M] = log σ_j² of its component."""

    fld: float
    test_nll: float
    train_nll: float
    baseline_nll: float
    gap: float
    memorization: torch.Tensor
    log_var: torch.Tensor


def neighbours_d2(x: torch.Tensor, centres: torch.Tensor, k: int):
    """float64 squared distances [N, k] and indices [N, k] of each x's k nearest centres."""
    _, idx = search(x, centres, k, "l2")
    return score64(x, centres, idx, "l2"), idx


def log_density(d2: torch.Tensor, log_var: torch.Tensor, dim: int) -> torch.Tensor:
    """log N(x; g, σ² I) from d2 = ‖x − g‖² and log σ² (broadcast), float64."""
    return -0.5 * d2 / log_var.exp() - 0.5 * dim * (math.log(2 * math.pi) + log_var)


def fit_log_var(centres: torch.Tensor, data: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Maximum-likelihood log σ_j² [M] of the mixture centred at centres [M, F] for data
    [N, F] (EM over each point's k nearest centres; see the module docstring)."""
    M, dim = centres.shape
    d2, idx = neighbours_d2(data, centres, k)
    nearest = neighbours_d2(centres, data, 1)[0][:, 0]
    log_var = ((nearest + 1e-3) / dim).log().clamp(*LOG_VAR_RANGE)
    lo = math.exp(LOG_VAR_RANGE[0])
    for _ in range(iters):
        r = torch.softmax(log_density(d2, log_var[idx], dim), dim=1)  # [N, k]
        mass = torch.zeros(M, dtype=torch.float64, device=d2.device).index_add_(
            0, idx.reshape(-1), r.reshape(-1))
        spread = torch.zeros_like(mass).index_add_(0, idx.reshape(-1), (r * d2).reshape(-1))
        seen = mass > 0
        var = spread[seen] / (dim * mass[seen])
        log_var[seen] = var.clamp_min(lo).log().clamp(*LOG_VAR_RANGE)
    return log_var


def mixture_nll(x: torch.Tensor, centres: torch.Tensor, log_var: torch.Tensor, k: int) -> float:
    """−(1/F) mean log p(x) under the mixture (1/M) Σ_j N(g_j, σ_j²), over each row's k
    nearest centres."""
    M, dim = centres.shape
    d2, idx = neighbours_d2(x, centres, k)
    ll = torch.logsumexp(log_density(d2, log_var[idx], dim), dim=1) - math.log(M)
    return float(-ll.mean() / dim)


def standardize(test: torch.Tensor, *sets: torch.Tensor) -> list[torch.Tensor]:
    """Every set minus the test mean, over the test std (1 where a feature is constant)."""
    mu = test.double().mean(0)
    sd = test.double().std(0)
    sd = torch.where(sd > 0, sd, 1.0)
    return [((s.double() - mu) / sd) for s in (test, *sets)]


def fld(train, test, gen, *, neighbours: int = 50, iters: int = 50, seed: int = 0,
        ci: float | None = None, n_boot: int = 100) -> FLD:
    """Feature Likelihood Divergence of gen [M, F] given train [N ≥ 2, F] and test
    [n ≥ 2, F] (see the module docstring for the model and what differs from the
    reference code). ``neighbours``: mixture components per point; ``seed``: the
    baseline's train split. ``ci``: a level makes each number an ``Estimate``
    (``confidence_interval``, ``n_boot`` half-samples seeded with ``seed``)."""
    if ci is not None:
        one = partial(fld, neighbours=neighbours, iters=iters, seed=seed)
        return confidence_interval(one, train, test, gen, ci=ci, n_boot=n_boot, seed=seed)
    check_positive_int(neighbours, "neighbours")
    check_positive_int(iters, "iters")
    train = as_features(train, "train", min_rows=2)
    test = as_features(test, "test", min_rows=2)
    gen = as_features(gen, "gen")
    train, test, gen = agree(train=train, test=test, gen=gen)
    test, train, gen = standardize(test, train, gen)
    dim = gen.shape[1]
    k = min(neighbours, gen.shape[0])
    log_var = fit_log_var(gen, train, k, iters)
    test_nll = mixture_nll(test, gen, log_var, k)
    train_nll = mixture_nll(train, gen, log_var, k)
    perm = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))
    split = min(gen.shape[0], train.shape[0] // 2)
    base_c, base_fit = train[perm[:split]], train[perm[split:]]
    kb = min(neighbours, split)
    baseline_nll = mixture_nll(test, base_c, fit_log_var(base_c, base_fit, kb, iters), kb)
    d2 = neighbours_d2(gen, train, 1)[0][:, 0]
    return FLD(
        fld=100 * (test_nll - baseline_nll), test_nll=test_nll, train_nll=train_nll,
        baseline_nll=baseline_nll, gap=100 * (train_nll - test_nll),
        memorization=log_density(d2, log_var, dim) / dim, log_var=log_var,
    )
