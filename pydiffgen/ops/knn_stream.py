"""Exact knn against keys that live on disk: a numpy array / memmap or a ``.npy`` path,
possibly larger than RAM or GPU memory, read in row chunks of at most ``chunk_bytes``.

Why exact: each chunk's k nearest are exact (``pydiffgen.ops.knn`` on the chunk), and a key
of the global top k (ordered by value, ties to the lower index) is in its chunk's top k
under the same order. So the union of the chunks' top k, re-ranked in float64 (rows
gathered from the file), is the global answer. Peak extra memory: one chunk plus the
search's own tiles, plus the [M, k·chunks] candidates and their unique rows.
Loading never executes code: ``np.load(..., allow_pickle=False, mmap_mode="r")``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .. import _native
from .._checks import check_positive_int, check_tensor
from ..errors import InputError
from .exact import check_finite, magnitude
from .knn import (
    DTYPES,
    METRIC_CODE,
    as_float,
    check_representable,
    rerank,
    rescaled,
    search,
    zero_queries,
)

_NUMPY_DTYPES = (np.float16, np.float32, np.float64, np.uint8)


def open_keys(keys) -> np.ndarray:
    """keys as a read-only array: a path to a ``.npy`` file is memory-mapped."""
    if isinstance(keys, (str, Path)):
        path = Path(keys)
        if not path.is_file():
            raise InputError(f"keys file {str(path)!r} does not exist")
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, EOFError, OSError) as err:  # EOFError: an empty file
            raise InputError(
                f"keys file {str(path)!r} is not a numeric .npy array ({err})"
            ) from None
        if not isinstance(arr, np.ndarray):
            raise InputError(f"keys file {str(path)!r} is an .npz archive; expected one .npy array")
        return arr
    if isinstance(keys, np.ndarray):
        return keys
    raise InputError(
        f"keys must be a torch.Tensor, a numpy array / memmap or a path to a .npy file, "
        f"got {type(keys).__name__}"
    )


def check_keys(arr: np.ndarray, queries: torch.Tensor, k: int) -> None:
    if arr.dtype.type not in _NUMPY_DTYPES:
        raise InputError(
            f"keys must hold float16/32/64 or uint8 values, got numpy dtype {arr.dtype}"
        )
    if arr.ndim < 2:
        raise InputError(f"keys must have at least 2 dimensions, got shape {arr.shape}")
    if tuple(arr.shape[1:]) != tuple(queries.shape[1:]):
        raise InputError(
            f"queries and keys must share feature shape, got {tuple(queries.shape[1:])} "
            f"and {tuple(arr.shape[1:])}"
        )
    if arr.shape[0] == 0:
        raise InputError("keys is empty (0 rows); expected at least one key")
    if k > arr.shape[0]:
        raise InputError(f"k={k} exceeds the number of keys N={arr.shape[0]}")


def knn(queries, keys, k: int, metric: str, backend: str | None, *, tile_elems: int,
        precision: str, chunk_bytes: int):
    """``pydiffgen.ops.knn`` for keys given as a numpy array / memmap / .npy path: each
    chunk's exact k nearest (``knn.search``), then the float64 re-rank of their union."""
    arr = open_keys(keys)
    check_tensor(queries, "queries", min_ndim=2, finite=False, floating=False)
    if queries.dtype not in DTYPES:
        raise InputError(
            f"queries must be a floating-point or uint8 tensor, got dtype {queries.dtype}"
        )
    amax = check_finite(queries, "queries")
    check_positive_int(k, "k")
    check_positive_int(chunk_bytes, "chunk_bytes")
    check_keys(arr, queries, k)
    N = arr.shape[0]
    flat = arr.reshape(N, -1)
    q = queries.reshape(len(queries), -1)
    rows = max(1, int(chunk_bytes) // max(1, flat.shape[1] * flat.dtype.itemsize))
    cands = []
    for n0 in range(0, N, rows):
        chunk = torch.from_numpy(np.array(flat[n0 : n0 + rows]))  # one copy of this chunk
        chunk_amax = magnitude(chunk)  # NaN or inf when any entry is
        if not math.isfinite(chunk_amax):
            raise InputError(f"keys contain NaN or Inf values (rows {n0}..{n0 + len(chunk) - 1})")
        amax = max(amax, chunk_amax)
        _, idx = search(q, chunk.to(q.device), min(k, len(chunk)), metric, backend,
                        tile_elems=tile_elems, precision=precision, amax=amax)
        cands.append(idx + n0)
        del chunk
    cand = torch.cat(cands, dim=1)
    uniq, local = torch.unique(cand.cpu(), return_inverse=True)  # sorted global indices
    keys_rows = torch.from_numpy(np.array(flat[uniq.numpy()])).to(q.device)
    values, li = rescaled(lambda qs, rs: _rerank(qs, rs, local.to(q.device), k, metric),
                          q, keys_rows, metric, amax)
    check_representable(values, metric)
    return zero_queries(q, values, uniq.to(q.device)[li], metric)


def _rerank(q, rows, cand, k, metric):
    """float64 re-rank of cand [M, C] (indices into rows): C++ on CPU, torch otherwise."""
    if q.device.type == "cpu" and _native.has_cpu_ops() and rows.dtype in (
        torch.float32, torch.float64, torch.uint8
    ):
        v, i = torch.ops.pydiffgen.knn_rerank(q, rows, cand, k, METRIC_CODE[metric])
        return v.float(), i
    return rerank(as_float(q), as_float(rows), cand, k, metric)
