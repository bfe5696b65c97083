"""Shared image conversions: intensity scaling to [-1, 1], array layout, crop and resize.

Every loader ends with :func:`from_unit`, so the [0, 1] → [-1, 1] convention (EDM
style, docs/science.md#conventions) lives in one place.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_positive_int
from ..errors import DataError, InputError

INTERPOLATIONS = ("bilinear", "bicubic")
# The most values a loader makes (1 GiB of them: 4 GiB as float32): larger requests are
# refused before anything is allocated.
MAX_VALUES = 2**30


def check_budget(n: int, per_image: int, source: str) -> None:
    """DataError if ``n`` images of ``per_image`` values each exceed ``MAX_VALUES``."""
    if n * per_image > MAX_VALUES:
        raise DataError(f"{source}: {n} images of {per_image} values are {n * per_image:.3g} "
                        f"values, above the limit of {MAX_VALUES:.3g}; ask for fewer or "
                        "smaller images")


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """Map intensities in [0, 1] to float32 contiguous [-1, 1]; same shape as ``x``."""
    # the clamp absorbs interpolation overshoot and float rounding at the ends
    return (x.to(torch.float32) * 2 - 1).clamp_(-1, 1).contiguous()


def resize(x: torch.Tensor, size: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Resize ``x [N, C, H, W]`` (values in [0, 1]) to ``[N, C, size, size]``.

    Downsampling is antialiased (a plain bilinear/bicubic resample would alias fine
    texture into the small image); bicubic overshoot is clipped back into [0, 1].
    Images already ``size × size`` are returned unchanged, so native sizes stay exact.
    """
    check_positive_int(size, "size")
    if interpolation not in INTERPOLATIONS:
        raise InputError(
            f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
        )
    if tuple(x.shape[-2:]) == (size, size):
        return x
    check_budget(x.shape[0], x.shape[1] * size * size, f"resize to {size}×{size}")
    shrinking = size < max(x.shape[-2:])
    out = F.interpolate(x, size=(size, size), mode=interpolation, align_corners=False,
                        antialias=shrinking)
    return out.clamp_(0, 1)


def center_crop(x: torch.Tensor) -> torch.Tensor:
    """Largest centred square of ``x [..., H, W]``: ``[..., s, s]`` with s = min(H, W)."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def to_nchw(arr: np.ndarray, source: str) -> np.ndarray:
    """Put an image array in ``[N, C, H, W]`` layout.

    Accepts ``[N, H, W]`` (one channel), ``[N, H, W, C]`` when the last dimension is 1, 3
    or 4 and smaller than H (the usual channels-last array), and ``[N, C, H, W]``.
    """
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        if arr.shape[-1] in (1, 3, 4) and arr.shape[-1] < arr.shape[1]:
            return arr.transpose(0, 3, 1, 2)
        return arr
    raise DataError(
        f"{source}: expected images shaped [N, H, W], [N, H, W, C] or [N, C, H, W], "
        f"got an array of shape {arr.shape}"
    )


def array_to_unit(arr: np.ndarray, source: str) -> tuple[torch.Tensor, str]:
    """Convert an image array to float64 values in [0, 1] and say how it was scaled.

    uint8 is divided by 255; floats already in [0, 1] or [-1, 1] are mapped exactly;
    anything else (other integer types, floats outside both ranges) is rescaled by its
    global min/max, which the returned description records so a user can spot it.
    """
    if arr.dtype == np.bool_:
        return torch.from_numpy(arr.astype(np.float64)), "bool → {0, 1}"
    if arr.dtype.kind not in "uif":
        raise DataError(f"{source}: expected a numeric image array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise DataError(f"{source}: the array is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return torch.from_numpy(arr.astype(np.float64) / 255.0), "uint8 / 255"
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{source}: the array contains NaN or Inf values")
    lo, hi = float(x.min()), float(x.max())
    if arr.dtype.kind == "f" and lo >= 0 and hi <= 1:
        return x, "float in [0, 1]"
    if arr.dtype.kind == "f" and lo >= -1 and hi <= 1:
        return (x + 1) / 2, "float in [-1, 1]"
    note = (f"values spanned [{lo:g}, {hi:g}], outside [0, 1] and [-1, 1]; "
            f"rescaled linearly by the global min/max")
    if hi == lo:
        return torch.full_like(x, 0.5), note
    return (x - lo) / (hi - lo), note
