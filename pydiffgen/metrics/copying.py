"""Do generated samples copy the training set? Four tests from the literature, each on
encoder features [N, F] and exact neighbours (``pydiffgen.ops.KnnIndex``, distances
recomputed from direct float64 differences).

- ``authpct``: Alaa et al. (ICML 2022) authenticity, as layer6ai-labs dgm-eval computes it.
- ``ct_score``: Meehan et al. (AISTATS 2020) data-copying test C_T.
- ``extraction_distance``: Carlini et al. (USENIX Security 2023) relative ℓ2 distance.
- ``copy_score``: Somepalli et al. (CVPR 2023) top-1 cosine similarity to train.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from .._checks import check_positive_float, check_positive_int
from ..errors import InputError
from ..ops.exact import score64
from ..ops.knn import KnnIndex
from .bootstrap import confidence_interval
from .inputs import agree, as_features
from .similarity import nearest_cosine


def nearest(index: KnnIndex, q: torch.Tensor,
            k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float64 Euclidean distances [M, k] (ascending) and indices [M, k] of the k
    nearest key rows x [N, F] of ``index`` (l2) for q [M, F]; ties to the lower index."""
    x = index.rows
    _, idx = index.search_rows(q, k)
    return score64(q, x, idx, "l2").clamp_min(0).sqrt(), idx


class GenTrain:
    """Generated features gen [M, F] against training features train [N, F] (checked,
    one width, device and dtype), with the searches AuthPct and the extraction distance
    share made once: the training set's index and gen's nearest training points (one
    search for the most neighbours asked; fewer are its prefix, since neighbours come
    ordered by distance, ties to the lower index)."""

    def __init__(self, gen: torch.Tensor, train: torch.Tensor):
        self.gen, self.train = gen, train
        self.index = KnnIndex.of_rows(train)
        self.found: tuple[torch.Tensor, torch.Tensor] | None = None

    def nearest(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float64 distances [M, k] ascending and indices [M, k] of each generated point's
        k nearest training points."""
        if self.found is None or self.found[1].shape[1] < k:
            self.found = nearest(self.index, self.gen, k)
        d, idx = self.found
        return d[:, :k], idx[:, :k]

    def gap(self, rows: torch.Tensor) -> torch.Tensor:
        """float64 [R]: the distance from each training point train[rows] (rows int64 [R])
        to its nearest *other* training point, the 2nd smallest counting itself (0 for a
        duplicate); searched once per distinct row, not for the whole training set."""
        distinct, back = torch.unique(rows, return_inverse=True)
        return nearest(self.index, self.train[distinct], 2)[0][back, 1]


def authpct(train, gen, *, ci: float | None = None, n_boot: int = 100,
            seed: int = 0) -> float:
    """Percentage of authentic generated samples, gen [M, F] against train [N ≥ 2, F].

    For each generated x̂ with nearest training point x_j (at d1 = ‖x̂ − x_j‖), and d2 the
    distance from x_j to its nearest *other* training point, x̂ is authentic when d2 < d1
    (Alaa et al. 2022, in dgm-eval's form): 100 · mean(authentic). A copy (d1 = 0) is never
    authentic; a training duplicate (d2 = 0) makes every sample at it authentic but a copy.
    ``ci``: a level returns an ``Estimate`` (``confidence_interval``, ``n_boot``
    half-samples of both sets, seeded with ``seed``).
    """
    if ci is not None:
        return confidence_interval(authpct, train, gen, ci=ci, n_boot=n_boot, seed=seed)
    train = as_features(train, "train", min_rows=2)
    gen = as_features(gen, "gen")
    train, gen = agree(train=train, gen=gen)
    return authentic_percent(GenTrain(gen, train))


def authentic_percent(pair: GenTrain) -> float:
    """``authpct`` of a ``GenTrain`` (train with ≥ 2 rows): only the training points that
    are some sample's nearest need their own nearest-other distance."""
    d1, j = pair.nearest(1)
    authentic = pair.gap(j[:, 0]) < d1[:, 0]
    return 100.0 * int(authentic.sum()) / len(authentic)


def mann_whitney_z(gen_d: torch.Tensor, test_d: torch.Tensor) -> float:
    """Meehan et al.'s Z_U: U = #{(q, p): q > p} + ½ #{q = p} over gen distances q [m] and
    test distances p [n] (scipy's ``mannwhitneyu(q, p).statistic``), Z-scored under H0
    with their continuity correction: (U − (nm/2 − ½)) / √(nm(n + m + 1)/12)."""
    p = test_d.double().sort().values
    q = gen_d.double()
    below = torch.searchsorted(p, q, side="left")
    upto = torch.searchsorted(p, q, side="right")
    u = float(below.sum()) + 0.5 * float((upto - below).sum())
    m, n = len(q), len(p)
    return (u - (n * m / 2 - 0.5)) / math.sqrt(n * m * (n + m + 1) / 12)


def kmeans_cells(train, test, gen, cells: int, seed: int):
    """Cell labels of each set from sklearn KMeans (n_init=10, random_state=seed) on train.

    One OpenMP thread: sklearn's OpenMP pool contends with torch's spin-waiting one (10×
    slower measured on a busy 2-core machine), and a few cells cost little next to the
    neighbour searches."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="openmp"):
        km = KMeans(n_clusters=cells, n_init=10, random_state=seed).fit(train.cpu().numpy())
    return [torch.from_numpy(km.predict(s.cpu().numpy()).astype(np.int64)).to(s.device)
            for s in (train, test, gen)]


def ct_score(train, test, gen, cells: int = 3, *, seed: int = 0, tau: float | None = None,
             ci: float | None = None, n_boot: int = 100) -> float:
    """Meehan et al. 2020 data-copying statistic C_T of gen [m, F] with train [l, F] and
    held-out test [n, F]; C_T < 0 means gen lies closer to train than test does (copying),
    ≫ 0 underfitting.

    Train is partitioned into ``cells`` k-means cells (test and gen are assigned to them).
    In each cell π: Z_U(π) of the distances from gen vs test points to their nearest train
    point *of that cell* (``mann_whitney_z``). Cells holding a gen fraction ≤ τ are dropped
    (τ = 20/m by default, as dgm-eval); C_T = Σ_π P_n(π) Z_U(π) / Σ_π P_n(π) over the kept
    cells, P_n(π) the test fraction. dgm-eval first projects features wider than 64 onto
    64 PCA components; pass such features to reproduce it. Every cell needs test and train
    points (else InputError: use fewer cells). ``ci``: a level returns an ``Estimate``
    (``confidence_interval``, ``n_boot`` half-samples seeded with ``seed``).
    """
    if ci is not None:
        one = partial(ct_score, cells=cells, seed=seed, tau=tau)
        return confidence_interval(one, train, test, gen, ci=ci, n_boot=n_boot, seed=seed)
    check_positive_int(cells, "cells")
    train = as_features(train, "train", min_rows=cells)
    test, gen = as_features(test, "test"), as_features(gen, "gen")
    train, test, gen = agree(train=train, test=test, gen=gen)
    m, n = gen.shape[0], test.shape[0]
    tau = 20 / m if tau is None else float(tau)
    t_cell, p_cell, q_cell = kmeans_cells(train, test, gen, cells, seed)
    weight, z = [], []
    for c in range(cells):
        T, Pn, Qm = train[t_cell == c], test[p_cell == c], gen[q_cell == c]
        if len(Pn) == 0 or len(T) == 0:
            raise InputError(f"ct_score: cell {c} holds no test or no train points; "
                             f"expected every cell to hold both (use fewer than {cells} cells)")
        if len(Qm) / m <= tau:
            continue
        cell = KnnIndex.of_rows(T)
        z.append(mann_whitney_z(nearest(cell, Qm)[0][:, 0], nearest(cell, Pn)[0][:, 0]))
        weight.append(len(Pn) / n)
    if not z:
        raise InputError(f"ct_score: no cell holds more than tau={tau:g} of gen; expected "
                         "at least one (use more generated samples or fewer cells)")
    return float(np.dot(weight, z) / np.sum(weight))


@dataclass(frozen=True)
class Extraction:
    """Carlini et al.'s relative distance per generated sample: ratio [M], nn_index [M]
    (its nearest training point), and fraction = mean(ratio < threshold)."""

    ratio: torch.Tensor
    nn_index: torch.Tensor
    fraction: float
    threshold: float = field(metadata={"parameter": True})


def extraction_distance(gen, train, alpha: float = 0.5, k: int = 50,
                        threshold: float = 1 / 3, *, ci: float | None = None,
                        n_boot: int = 100, seed: int = 0) -> Extraction:
    """ℓ(x̂, x; S) = ‖x̂ − x‖ / (α · mean_{y ∈ S} ‖x̂ − y‖) for each generated x̂ [M, F], with
    x its nearest training point and S its k nearest training points (Carlini et al. 2023:
    α = 0.5, k = 50). Small ratios mean x̂ is far closer to one training image than to the
    rest (extracted). ``threshold`` is this library's default cut, not one from the paper.
    A sample whose k neighbours all sit at distance 0 gets ratio 0 (an exact copy).
    ``ci``: a level makes ``fraction`` an ``Estimate`` (``confidence_interval``,
    ``n_boot`` half-samples seeded with ``seed``; train needs 2k rows then).
    """
    if ci is not None:
        return confidence_interval(extraction_distance, gen, train, alpha=alpha, k=k,
                                   threshold=threshold, ci=ci, n_boot=n_boot, seed=seed)
    pair, alpha, threshold = _extraction_inputs(gen, train, alpha, k, threshold, min_rows=k)
    return extraction_of(pair, alpha, k, threshold)


def _extraction_inputs(gen, train, alpha, k, threshold, *, min_rows: int):
    """Validated (GenTrain(gen, train), alpha, threshold) of the extraction distance."""
    check_positive_int(k, "k")
    alpha = check_positive_float(alpha, "alpha")
    threshold = check_positive_float(threshold, "threshold")
    gen = as_features(gen, "gen")
    train = as_features(train, "train", min_rows=min_rows)
    return GenTrain(*agree(gen=gen, train=train)), alpha, threshold


def extraction_of(pair: GenTrain, alpha: float, k: int, threshold: float) -> Extraction:
    """``extraction_distance`` of a ``GenTrain`` (train with ≥ k rows)."""
    d, idx = pair.nearest(k)
    scale = alpha * d.mean(1)
    ratio = torch.where(scale > 0, d[:, 0] / scale.clamp_min(1e-300), 0.0)
    return Extraction(ratio=ratio, nn_index=idx[:, 0],
                      fraction=float((ratio < threshold).double().mean()),
                      threshold=threshold)


def authpct_extraction(gen, train, alpha: float = 0.5, k: int = 50, threshold: float = 1 / 3,
                       *, ci: float | None = None, n_boot: int = 100,
                       seed: int = 0) -> dict[str, float]:
    """``{"authpct": authpct(train, gen), "extraction.fraction":
    extraction_distance(gen, train, alpha, k, threshold).fraction}`` from one training
    index and one gen→train search (``GenTrain``): what ``pydiffgen metrics`` and the
    sweep compute when both are asked for. ``ci``: a level makes both Estimates over the
    same half-samples (``confidence_interval``, ``n_boot`` seeded with ``seed``)."""
    if ci is not None:
        return confidence_interval(authpct_extraction, gen, train, alpha=alpha, k=k,
                                   threshold=threshold, ci=ci, n_boot=n_boot, seed=seed)
    pair, alpha, threshold = _extraction_inputs(gen, train, alpha, k, threshold,
                                                min_rows=max(k, 2))
    return {"authpct": authentic_percent(pair),
            "extraction.fraction": extraction_of(pair, alpha, k, threshold).fraction}


@dataclass(frozen=True)
class CopyScore:
    """Somepalli et al.'s similarities: similarity [M] (top-1 cosine of each generated
    sample to train), nn_index [M], p95 (its 95th percentile), fraction (> threshold),
    and the train-vs-train background (top-1 cosine of each train point to the others,
    [N], and its 95th percentile), or None when not asked for."""

    similarity: torch.Tensor
    nn_index: torch.Tensor
    p95: float
    fraction: float
    threshold: float = field(metadata={"parameter": True})
    background: torch.Tensor | None
    background_p95: float | None


def copy_score(gen, train, threshold: float = 0.5, *, background: bool = True,
               ci: float | None = None, n_boot: int = 100, seed: int = 0) -> CopyScore:
    """Top-1 cosine similarity of each generated feature gen [M, F] to train [N, F]
    (Somepalli et al. 2023; threshold 0.5 as the paper uses for SSCD features), its 95th
    percentile and the fraction above the threshold; ``background`` adds each training
    point's top-1 cosine to the other training points (needs N ≥ 2), the level a copy
    must beat. ``ci``: a level makes p95, fraction and background_p95 Estimates
    (``confidence_interval``, ``n_boot`` half-samples seeded with ``seed``)."""
    if ci is not None:
        return confidence_interval(copy_score, gen, train, threshold=threshold,
                                   background=background, ci=ci, n_boot=n_boot, seed=seed)
    threshold = check_positive_float(threshold, "threshold")
    gen = as_features(gen, "gen")
    train = as_features(train, "train", min_rows=2 if background else 1)
    gen, train = agree(gen=gen, train=train)
    sim, idx = nearest_cosine(gen, train, return_index=True)
    sim = sim.double()
    bg = nearest_cosine(train, train, exclude_self=True).double() if background else None
    return CopyScore(
        similarity=sim, nn_index=idx, p95=float(torch.quantile(sim, 0.95)),
        fraction=float((sim > threshold).double().mean()), threshold=threshold,
        background=bg, background_p95=None if bg is None else float(torch.quantile(bg, 0.95)),
    )
