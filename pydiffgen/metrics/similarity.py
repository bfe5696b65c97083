"""Similarity between generated samples, and between samples and a training set.

Kadkhodaie et al. (ICLR 2024, Fig. 2) compare samples by cosine similarity (normalized
inner product): between the two models' samples from the same seed, and between each
sample and its nearest training image. ``center=True`` removes each image's mean first
(a correlation), which stops a shared background from inflating every similarity.
"""

from __future__ import annotations

import torch

from .._checks import check_same_image_shape, check_tensor
from ..errors import InputError
from ..ops.knn import search


def _flat(x, name, center):
    check_tensor(x, name, min_ndim=2)
    v = x.reshape(len(x), -1).double()
    return v - v.mean(1, keepdim=True) if center else v


def paired_cosine(a, b, *, center: bool = False) -> torch.Tensor:
    """Cosine similarity of a[i] with b[i]. a, b: [M, *F] -> [M] float32."""
    va, vb = _flat(a, "a", center), _flat(b, "b", center)
    if va.shape != vb.shape:
        raise InputError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    cos = (va * vb).sum(1) / (va.norm(dim=1) * vb.norm(dim=1)).clamp_min(1e-300)
    return cos.float()


def nearest_cosine(samples, train, *, center: bool = False, return_index: bool = False,
                   exclude_self: bool = False):
    """Largest cosine similarity of each sample to any training image.

    samples [M, *F], train [N, *F] -> [M] (and the index of that training image).
    ``exclude_self``: samples *are* the training set, so skip each image's own match
    (the train-vs-train background of Somepalli et al. 2023).
    """
    vs, vt = _flat(samples, "samples", center), _flat(train, "train", center)
    check_same_image_shape(samples, train, "samples", "train")
    k = 2 if exclude_self else 1
    if len(vt) < k:
        raise InputError(f"train needs at least {k} images here, got {len(vt)}")
    if vs.device != vt.device:
        raise InputError(f"samples and train must be on one device, got {vs.device} and "
                         f"{vt.device}")
    values, index = search(vs.float(), vt.float(), k, "cosine")
    if exclude_self:
        own = torch.arange(len(vs))[:, None] == index
        col = own[:, 0].long()  # the best match is itself: take the second
        values = values.gather(1, col[:, None])
        index = index.gather(1, col[:, None])
    values, index = values[:, 0], index[:, 0]
    # Re-evaluate the winners in float64 so identical images score exactly 1.
    values = paired_cosine(vs, vt[index]).to(values.dtype)
    return (values, index) if return_index else values


def closest_pairs_cosine(a, b, *, center: bool = False) -> torch.Tensor:
    """For each image of ``a`` its best cosine match in ``b``: the S1-vs-S2 baseline."""
    return nearest_cosine(a, b, center=center)
