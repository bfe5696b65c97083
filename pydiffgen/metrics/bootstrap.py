"""Confidence intervals for every scalar feature-space metric: half-sampling without
replacement (the delete-d jackknife with d = n/2), one home for all metrics.

Why not the bootstrap. Resampling with replacement repeats points, and a repeated point is
its own nearest neighbour at distance 0: k-NN radii shrink (PRDC recall and coverage,
AuthPct's train-to-train distances, C_T, extraction), a Gaussian fit loses rank (FD, FLD)
and the unbiased KID sees duplicate pairs. The resampled statistic is then biased, and the
percentile interval can exclude the full-set value.

The method. Each replicate draws, independently for every set of size n_i, a subset of
b_i = ⌊n_i/2⌋ distinct rows (numpy generator seeded with ``seed``) and recomputes the
metric: no point is ever repeated, so every replicate is a sample of the same kind as the
data (ties in the data stay ties, no new ones appear). A statistic of a subsample drawn
without replacement varies by σ²(n − b)/(b n) (finite-population correction), so the
variance of the full-set statistic σ²/n is the replicates' variance times b/(n − b): the
delete-d jackknife variance of Shao & Wu (Ann. Stat. 1989), consistent for non-smooth
statistics (quantiles, counts of neighbours) when d and n − d grow with n, which d = n/2
satisfies; with b = n/2 it is also the √(b/n)·√(1 − b/n) rate correction of m-out-of-n
subsampling (Politis & Romano 1994) at b/n = ½. The interval is value ± z·√v (normal),
centred on the full-set value: it always contains it, and the difference between the
half-sample and full-sample means (k-NN radii and FD's bias depend on n) cannot shift it.
Coverage is nominal for asymptotically normal statistics (tests: FD between Gaussians of
known FD; PRDC density and coverage on identical distributions, whose expectations Naeem
et al. 2020 give in closed form; KID of identical distributions, 0).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch

from .._checks import check_positive_int
from ..errors import InputError


@dataclass(frozen=True)
class Estimate:
    """A metric's value on the full sets and its confidence interval [low, high] at level
    ``ci``; ``float(estimate)`` is the value."""

    value: float
    low: float
    high: float
    ci: float

    def __float__(self) -> float:
        return self.value


def scalars(result) -> dict[str, float] | float:
    """A metric's result as a float, or its float fields (dataclass or mapping) by name;
    a dataclass field marked ``metadata={"parameter": True}`` (a threshold) is no
    estimate and is left out."""
    if isinstance(result, numbers.Real):
        return float(result)
    if dataclasses.is_dataclass(result):
        result = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                  if not f.metadata.get("parameter")}
    if isinstance(result, dict):
        out = {k: float(v) for k, v in result.items() if isinstance(v, numbers.Real)}
        if out:
            return out
    raise InputError(f"confidence_interval: fn must return a number or a dataclass/dict with "
                     f"number fields, got {type(result).__name__}")


def rows(x, idx: np.ndarray):
    """Rows idx of a torch tensor or numpy array [N, ...]."""
    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(idx).to(x.device)]
    return np.asarray(x)[idx]


def half_samples(sets, n_boot: int, seed: int):
    """``n_boot`` replicates, each the sets [n_i, ...] cut to ⌊n_i/2⌋ distinct random rows,
    and the variance factor mean_i b_i/(n_i − b_i) (1 when every n_i is even)."""
    sizes = [len(s) for s in sets]
    if min(sizes) < 2:
        raise InputError(f"ci needs at least 2 rows in every set (half-samples), got sizes "
                         f"{sizes}")
    rng = np.random.default_rng(seed)
    factor = float(np.mean([(n // 2) / (n - n // 2) for n in sizes]))
    draws = ([rows(s, np.sort(rng.permutation(n)[:n // 2])) for s, n in zip(sets, sizes)]
             for _ in range(n_boot))
    return draws, factor


def confidence_interval(fn, *sets, ci: float = 0.95, n_boot: int = 100, seed: int = 0,
                        **kwargs):
    """fn(*sets, **kwargs) with each of its numbers made an ``Estimate``: the value on the
    full sets [N_i, F] and its half-sampling interval at level ``ci`` over ``n_boot``
    replicates (module docstring). A scalar fn gives an ``Estimate``; a dataclass result
    (or dict) comes back with its number fields replaced by Estimates (tensors unchanged),
    e.g. ``confidence_interval(prdc, real, fake).precision.low``."""
    check_positive_int(n_boot, "n_boot", minimum=2)
    if isinstance(ci, bool) or not isinstance(ci, numbers.Real) or not 0 < ci < 1:
        raise InputError(f"ci must be a level strictly between 0 and 1 (or None), got {ci!r}")
    if not sets:
        raise InputError("confidence_interval needs at least one feature set")
    result = fn(*sets, **kwargs)
    full = scalars(result)
    draws, factor = half_samples(sets, n_boot, seed)
    try:
        reps = [scalars(fn(*half, **kwargs)) for half in draws]
    except InputError as err:
        name = getattr(getattr(fn, "func", fn), "__name__", "fn")  # a partial's function
        raise InputError(f"ci: half-samples of {[len(s) // 2 for s in sets]} rows are too "
                         f"small for {name}: {err}") from None
    z = NormalDist().inv_cdf((1 + ci) / 2)

    def estimate(value: float, replicates: list[float]) -> Estimate:
        half = z * float(np.sqrt(np.var(replicates, ddof=1) * factor))
        return Estimate(value, value - half, value + half, float(ci))

    if isinstance(full, float):
        return estimate(full, reps)
    fields = {name: estimate(v, [r[name] for r in reps]) for name, v in full.items()}
    return {**result, **fields} if isinstance(result, dict) else \
        dataclasses.replace(result, **fields)
