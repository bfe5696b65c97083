"""Argument validation shared by every public function: one clear message per mistake."""

from __future__ import annotations

import math

import torch

from .errors import InputError


def check_tensor(
    x,
    name: str,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    floating: bool = True,
    finite: bool = True,
    nonempty: bool = True,
) -> torch.Tensor:
    """Return ``x`` as a tensor after checking type, rank, dtype, emptiness and finiteness."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise InputError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise InputError(
            f"{name} must have at least {min_ndim} dimensions, got shape {tuple(x.shape)}"
        )
    if floating and not x.is_floating_point():
        raise InputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if nonempty and x.numel() == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)}); expected at least one element")
    if finite and x.is_floating_point() and x.numel() and not all_finite(x):
        raise InputError(f"{name} contains NaN or Inf values")
    return x


def all_finite(x: torch.Tensor, chunk_elems: int = 1 << 22) -> bool:
    """isfinite over row chunks: no temporary the size of a dataset."""
    if x.ndim == 0 or x.numel() <= chunk_elems:
        return bool(torch.isfinite(x).all())
    rows = max(1, chunk_elems // max(1, x[0].numel()))
    return all(bool(torch.isfinite(c).all()) for c in x.split(rows))


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive_float(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{name} must be a positive finite number, got {value!r}")
    return v


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def as_sigma(sigma, batch: int, *, device=None, dtype=torch.float32, name: str = "sigma"):
    """Noise levels as a ``[batch]`` tensor; accepts a float, a 0-d or a ``[batch]`` tensor.

    σ ≤ 0, NaN and Inf are rejected: every formula here divides by σ or σ².
    """
    if isinstance(sigma, torch.Tensor):
        s = sigma.detach().to(device=device, dtype=dtype) if device is not None else sigma.to(dtype)
        if s.ndim == 0:
            s = s.expand(batch)
        elif s.ndim != 1 or s.shape[0] not in (1, batch):
            raise InputError(
                f"{name} must be a float or a tensor of shape [{batch}], got shape {tuple(s.shape)}"
            )
        elif s.shape[0] == 1:
            s = s.expand(batch)
        # (not while a CUDA graph is being captured: the check would synchronise)
        if s.numel() and not _capturing() and not bool(((s > 0) & torch.isfinite(s)).all()):
            raise InputError(f"{name} must be positive and finite everywhere")
        return s
    return torch.full((batch,), check_positive_float(sigma, name), device=device, dtype=dtype)


def check_same_image_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Two image sets [N, *F] must share F (each image is compared with the other set's)."""
    if a.shape[1:] != b.shape[1:]:
        raise InputError(f"{name_a} and {name_b} must share image shape, got "
                         f"{tuple(a.shape[1:])} and {tuple(b.shape[1:])}")
