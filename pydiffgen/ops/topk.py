"""Running top-k merge: the selection step of streamed nearest-neighbour search.

Backends in priority order:
  CPU:  cpp (pydiffgen._C, OpenMP over rows, heap selection) → reference;
  CUDA: cuda (pydiffgen._C built with CUDA, one block per row, k ≤ 1024) → reference.
The C++ op is ``torch.ops.pydiffgen.topk_merge`` (schema in csrc/pydiffgen_C.cpp); its
fake kernel is registered here so it traces under ``torch.compile``.
"""

from __future__ import annotations

import torch

from .. import _native
from .._checks import check_tensor
from ..errors import InputError
from . import dispatch, reference
from ._register import register

# Largest k the CUDA kernel handles (shared-memory bitonic buffers); above it the cuda
# backend hands the call to the reference.
CUDA_MAX_K = 1024
_NATIVE_DTYPES = (torch.float32, torch.float64)


def topk_merge(values, indices, tile, offset: int, largest: bool = False, backend=None):
    """Merge scores ``tile [M, T]`` of keys ``offset..offset+T-1`` into a running top-k.

    values [M, k] (sorted; empty slots ±inf with index -1), indices int64 [M, k].
    Returns the updated (values, indices), ties broken by the lower key index.
    ±inf scores are allowed; NaN is rejected.
    """
    check_tensor(values, "values", ndim=2, finite=False, nonempty=False)
    check_tensor(tile, "tile", ndim=2, finite=False, nonempty=False)
    if indices.shape != values.shape or indices.dtype.is_floating_point:
        raise InputError(
            f"indices must be an integer tensor shaped like values {tuple(values.shape)}, "
            f"got {indices.dtype} {tuple(indices.shape)}"
        )
    if tile.shape[0] != values.shape[0]:
        raise InputError(f"tile has {tile.shape[0]} rows but values has {values.shape[0]}")
    if not (values.device == indices.device == tile.device):
        raise InputError(
            f"values, indices and tile must be on one device, got {values.device}, "
            f"{indices.device} and {tile.device}"
        )
    if tile.numel() and bool(torch.isnan(tile).any()):
        raise InputError("tile contains NaN scores; replace them (e.g. with ±inf) first")
    if values.numel() and bool(torch.isnan(values).any()):
        raise InputError("values contains NaN; empty slots must be ±inf")
    return merge(values, indices.long(), tile, int(offset), bool(largest), backend)


def merge(values, indices, tile, offset: int, largest: bool, backend=None):
    """``topk_merge`` without validation (no device sync): for callers such as ``knn``
    whose inputs are valid by construction. indices must be int64."""
    impl = dispatch.op("topk_merge").select(values.device.type, backend)
    return impl.fn(values, indices, tile, offset, largest)


def _native_call(values, indices, tile, offset, largest):
    dtype = values.dtype
    if dtype in _NATIVE_DTYPES:
        return torch.ops.pydiffgen.topk_merge(values, indices, tile, offset, largest)
    # half / bfloat16: round the tile to the values' dtype (as the reference does), then
    # compare in float32, which orders those values exactly; cast back losslessly
    v, i = torch.ops.pydiffgen.topk_merge(
        values.float(), indices, tile.to(dtype).float(), offset, largest
    )
    return v.to(dtype), i


def _cpp(values, indices, tile, offset, largest):
    return _native_call(values, indices, tile, offset, largest)


def _cuda(values, indices, tile, offset, largest):
    if values.shape[1] > CUDA_MAX_K:
        return reference.topk_merge(values, indices, tile, offset, largest)
    return _native_call(values, indices, tile, offset, largest)


def _fake(values, indices, tile, offset, largest):
    torch._check(indices.shape == values.shape)
    torch._check(tile.shape[0] == values.shape[0])
    M, k = values.shape
    return values.new_empty(M, k), values.new_empty(M, k, dtype=torch.int64)


if _native.LOADED:
    register("topk_merge", fake=_fake)

_op = dispatch.op("topk_merge")
_op.register("cuda", ("cuda",), _cuda, _native.cuda_why_not)
_op.register("cpp", ("cpu",), _cpp, _native.cpu_why_not)
_op.register("reference", ("cpu", "cuda"), reference.topk_merge)
