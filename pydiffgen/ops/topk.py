"""Running top-k merge: the selection step of streamed nearest-neighbour search.

Backends in priority order: CPU C++ (pydiffgen._C, OpenMP over rows) → reference.
"""

from __future__ import annotations

from .._checks import check_tensor
from ..errors import InputError
from . import _dispatch, reference


def topk_merge(values, indices, tile, offset: int, largest: bool = False, backend=None):
    """Merge scores ``tile [M, T]`` of keys ``offset..offset+T-1`` into a running top-k.

    values [M, k] (sorted; empty slots ±inf with index -1), indices int64 [M, k].
    Returns the updated (values, indices), ties broken by the lower key index.
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
    impl = _dispatch.op("topk_merge").select(values.device.type, backend)
    return impl.fn(values, indices, tile, int(offset), bool(largest))


_dispatch.op("topk_merge").register("reference", ("cpu", "cuda"), reference.topk_merge)
