"""Memorization measured by distances to the nearest training images."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._checks import check_positive_float, check_same_image_shape, check_tensor
from ..errors import InputError
from ..ops import knn


@dataclass(frozen=True)
class MemorizationReport:
    """Per-sample distances to the two nearest training images and the verdict.

    d1, d2: Euclidean distances to the nearest / second-nearest training image [M];
    ratio = d1 / d2 [M]; nn_index [M]; memorized = ratio < threshold [M];
    fraction: the share of memorized samples.
    """

    d1: torch.Tensor
    d2: torch.Tensor
    ratio: torch.Tensor
    nn_index: torch.Tensor
    memorized: torch.Tensor
    fraction: float
    threshold: float


def _check_pair(samples, train):
    check_tensor(samples, "samples", min_ndim=2)
    check_tensor(train, "train", min_ndim=2)
    check_same_image_shape(samples, train, "samples", "train")


def memorization(samples, train, threshold: float = 1 / 3) -> MemorizationReport:
    """Yoon et al. 2023 / Gu et al. 2023: a sample is memorized when
    ‖x − NN1‖ / ‖x − NN2‖ < threshold (pixel L2, two nearest training images).

    samples [M, *F], train [N, *F] with N ≥ 2.
    """
    _check_pair(samples, train)
    threshold = check_positive_float(threshold, "threshold")
    if len(train) < 2:
        raise InputError(f"memorization needs at least 2 training images, got {len(train)}")
    sq, idx = knn(samples, train, 2, metric="l2")
    return memorization_from_knn(sq, idx, threshold)


def memorization_from_knn(sq, idx, threshold: float = 1 / 3) -> MemorizationReport:
    """The report of :func:`memorization` from a finished search: ``sq`` [M, ≥2] squared
    distances ascending and ``idx`` [M, ≥2] indices of the nearest training images (e.g.
    ``knn(samples, train, 2)``, or a sharded search)."""
    threshold = check_positive_float(threshold, "threshold")
    d = sq[:, :2].double().clamp_min(0).sqrt()
    d1, d2 = d[:, 0], d[:, 1]
    # d2 = 0 means two identical training images: the sample is a copy only if d1 = 0 too
    ratio = torch.where(d2 > 0, d1 / d2.clamp_min(1e-300), (d1 > 0).double() * float("inf"))
    ratio = torch.nan_to_num(ratio, nan=0.0)
    memorized = ratio < threshold
    return MemorizationReport(
        d1=d1.float(), d2=d2.float(), ratio=ratio.float(), nn_index=idx[:, 0],
        memorized=memorized, fraction=float(memorized.double().mean()), threshold=threshold,
    )


def generalization_score(samples, train) -> float:
    """Li, Dai & Qu (NeurIPS 2024): mean ‖x − NN_Y(x)‖ / ‖x‖ over generated x.

    Near 0: samples are training images; above ~0.6 the model generalizes.
    """
    _check_pair(samples, train)
    norms = samples.reshape(len(samples), -1).double().norm(dim=1)  # [N]
    if bool((norms == 0).any()):  # ‖x − NN(x)‖ / ‖x‖ has no value at x = 0
        raise InputError(f"generalization_score: {int((norms == 0).sum())} sample(s) are all "
                         "zeros, where the relative distance is undefined; drop them")
    sq, _ = knn(samples, train, 1, metric="l2")
    return float((sq[:, 0].double().clamp_min(0).sqrt() / norms).mean())
