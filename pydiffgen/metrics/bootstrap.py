"""Bootstrap confidence intervals for any scalar feature-space metric.

Every metric here is a function of finite samples; resampling each set with replacement
and recomputing gives the percentile interval (Efron & Tibshirani 1993) of its sampling
variability. One helper serves all: ``bootstrap(prdc, real, fake, k=5)``.

Caveat for neighbour-based metrics (PRDC, AuthPct, C_T, extraction distance, FLD): a
resample repeats points, and a repeated point is its own neighbour at distance 0, which
shrinks k-NN radii within that set (AuthPct's train-to-train distances collapse). Resample
only the generated set there (``resample_sets=(1,)`` for ``authpct(train, gen)``): the interval
is then conditional on the reference sets. Duplicates are handled exactly (ties are exact).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_positive_int
from ..errors import InputError


@dataclass(frozen=True)
class Estimate:
    """A metric's value on the full sets and its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    ci: float


def scalars(result) -> dict[str, float] | float:
    """A metric's result as a float, or its float fields (dataclass or mapping) by name."""
    if isinstance(result, numbers.Real):
        return float(result)
    if dataclasses.is_dataclass(result):
        result = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    if isinstance(result, dict):
        out = {k: float(v) for k, v in result.items() if isinstance(v, numbers.Real)}
        if out:
            return out
    raise InputError(f"bootstrap: fn must return a number or a dataclass/dict with number "
                     f"fields, got {type(result).__name__}")


def resample(x, idx: np.ndarray):
    """Rows idx of a torch tensor or numpy array [N, ...]."""
    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(idx).to(x.device)]
    return np.asarray(x)[idx]


def bootstrap(fn, *sets, ci: float = 0.95, n_boot: int = 200, seed: int = 0,
              resample_sets: tuple[int, ...] | None = None, **kwargs):
    """fn(*sets, **kwargs) and its percentile interval at level ``ci`` over ``n_boot``
    resamples, each set [N_i, F] drawn with replacement independently (numpy generator
    seeded with ``seed``); ``resample_sets``: the positions of the sets to redraw (default
    all; the others stay fixed). Returns an ``Estimate`` for a scalar fn, else a dict of them by
    field name (e.g. ``bootstrap(prdc, real, fake)["precision"]``)."""
    check_positive_int(n_boot, "n_boot", minimum=2)
    if not 0 < ci < 1:
        raise InputError(f"ci must lie strictly between 0 and 1, got {ci!r}")
    if not sets:
        raise InputError("bootstrap needs at least one feature set to resample")
    redraw = range(len(sets)) if resample_sets is None else resample_sets
    if any(not 0 <= i < len(sets) for i in redraw):
        raise InputError(f"resample_sets must index the {len(sets)} sets, got {resample_sets!r}")
    full = scalars(fn(*sets, **kwargs))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        picked = [resample(s, rng.integers(0, len(s), len(s))) if i in redraw else s
                  for i, s in enumerate(sets)]
        draws.append(scalars(fn(*picked, **kwargs)))
    q = [(1 - ci) / 2, (1 + ci) / 2]
    if isinstance(full, float):
        low, high = np.quantile(draws, q)
        return Estimate(full, float(low), float(high), ci)
    out = {}
    for name, value in full.items():
        low, high = np.quantile([d[name] for d in draws], q)
        out[name] = Estimate(value, float(low), float(high), ci)
    return out
