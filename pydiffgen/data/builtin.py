"""Datasets bundled with scikit-learn and scikit-image: no download, always available.

Each loader returns ``(x, info)`` with ``x [N, C, H, W]`` float32 in [-1, 1]; the
registry (:mod:`.registry`) adds the name and options to ``info``.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .._checks import check_positive_int
from ..errors import DataError
from .transforms import from_unit, resize

# scikit-image photographs that ship inside the package (no pooch download)
PHOTOGRAPHS = (
    "camera", "astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel",
    "moon", "coins", "clock", "cell", "hubble_deep_field", "immunohistochemistry", "cat",
    "page", "text", "retina",
)


def digits(*, size: int = 8, n: int | None = None, interpolation: str = "bilinear"):
    """scikit-learn's 1797 handwritten digits, 8×8, values 0..16: ``[N, 1, size, size]``.

    ``n`` keeps the first n; ``size`` ≠ 8 resamples with ``interpolation``.
    ``info["labels"]`` int64 [N] holds the digit classes.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images / 16.0)[:, None]  # [1797, 1, 8, 8]
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    if n is not None:
        x, labels = x[: _count(n, len(x), "digits")], labels[:n]
    return from_unit(resize(x, size, interpolation)), {"groups": None, "labels": labels}


def faces(*, size: int = 25, faces_only: bool = True, interpolation: str = "bilinear"):
    """scikit-image's LFW subset: 25×25 grayscale crops, ``[N, 1, size, size]``.

    The 200 images are 100 faces followed by 100 non-faces; ``faces_only`` keeps the
    faces. ``info["labels"]`` int64 [N] is 1 for a face, 0 otherwise.
    """
    from skimage.data import lfw_subset

    x = torch.from_numpy(lfw_subset())[:, None]  # [200, 1, 25, 25] in [0, 1]
    labels = (torch.arange(len(x)) < 100).to(torch.int64)
    if faces_only:
        x, labels = x[:100], labels[:100]
    return from_unit(resize(x, size, interpolation)), {"groups": None, "labels": labels}


@functools.lru_cache(maxsize=len(PHOTOGRAPHS))
def _photograph(name: str) -> np.ndarray:
    """One bundled photograph as grayscale float64 [H, W] in [0, 1] (cached: decoding is slow)."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    img = img_as_float(getattr(skimage.data, name)())
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    img.setflags(write=False)
    return img


def patches(*, size: int = 16, stride: int | None = None, n: int | None = None, seed: int = 0,
            images=None):
    """Grayscale ``size × size`` patches cut from scikit-image's bundled photographs.

    ``stride`` defaults to ``size`` (non-overlapping tiles). ``n`` draws a random subset
    (reproducible with ``seed``), kept in source order. ``images`` restricts the
    photographs (names from :data:`PHOTOGRAPHS`). ``info["groups"]`` int64 [N] indexes
    ``info["sources"]``, so splits can keep patches of one photograph together;
    ``info["positions"]`` int64 [N, 2] holds each patch's top-left (row, column).
    """
    check_positive_int(size, "size")
    stride = size if stride is None else check_positive_int(stride, "stride")
    sources = _photograph_names(images)
    chunks, groups, positions = [], [], []
    for g, name in enumerate(sources):
        img = torch.tensor(_photograph(name))  # copy: the cached array is read-only
        if min(img.shape) < size:
            continue
        rows = torch.arange(0, img.shape[0] - size + 1, stride)
        cols = torch.arange(0, img.shape[1] - size + 1, stride)
        if len(rows) == 0 or len(cols) == 0:
            continue
        tiles = img.unfold(0, size, stride).unfold(1, size, stride)  # [R, K, size, size]
        chunks.append(tiles.reshape(-1, 1, size, size))
        groups.append(torch.full((len(rows) * len(cols),), g, dtype=torch.int64))
        positions.append(torch.cartesian_prod(rows, cols))
    if not chunks:
        raise DataError(f"patches: no {size}×{size} patch fits in any of {', '.join(sources)}")
    x, groups, positions = torch.cat(chunks), torch.cat(groups), torch.cat(positions)
    if n is not None:
        gen = torch.Generator().manual_seed(seed)
        keep = torch.randperm(len(x), generator=gen)[: _count(n, len(x), "patches")]
        keep = keep.sort().values
        x, groups, positions = x[keep], groups[keep], positions[keep]
    info = {"groups": groups, "sources": list(sources), "positions": positions}
    return from_unit(x), info


def _photograph_names(images) -> tuple[str, ...]:
    if images is None:
        return PHOTOGRAPHS
    names = (images,) if isinstance(images, str) else tuple(images)
    unknown = [m for m in names if m not in PHOTOGRAPHS]
    if unknown or not names or len(set(names)) != len(names):
        why = f" (unknown: {', '.join(map(str, unknown))})" if unknown else ""
        raise DataError(
            f"patches: images must be distinct names from {', '.join(PHOTOGRAPHS)}; "
            f"got {list(names)}{why}"
        )
    return names


def _count(n, available: int, name: str) -> int:
    check_positive_int(n, "n")
    if n > available:
        raise DataError(f"{name}: n={n} exceeds the {available} images available")
    return n
