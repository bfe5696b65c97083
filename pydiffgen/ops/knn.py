"""Exact k-nearest-neighbour search, streamed over key tiles (never an M×N matrix).

Numerics (DESIGN.md): keys' mean is subtracted before the ‖q‖²+‖x‖²−2⟨q,x⟩ expansion,
which only ranks candidates; the final k are recomputed directly as ‖q−x‖² in float64,
so near-duplicate keys (memorization) are ordered exactly. Candidate pool: k + 16 per
query, enough to absorb the expansion's rounding on [-1, 1] image data.
"""

from __future__ import annotations

import torch

from .._checks import check_positive_int, check_tensor
from ..errors import InputError
from . import _dispatch
from .topk import merge

METRICS = ("l2", "cosine", "ip")
_EXTRA_CANDIDATES = 16


def knn(queries, keys, k: int, metric: str = "l2", backend: str | None = None,
        *, tile_elems: int = 1 << 24):
    """k nearest keys of each query.

    queries [M, *F], keys [N, *F] (flattened over F). metric ``l2``: squared Euclidean
    distances ascending; ``cosine``: cosine similarity descending; ``ip``: inner product
    descending. Returns (values float32 [M, k], indices int64 [M, k]).
    ``tile_elems`` bounds the scores held at once (M_chunk × N_tile).
    """
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    check_tensor(queries, "queries", min_ndim=2)
    check_tensor(keys, "keys", min_ndim=2)
    if queries.shape[1:] != keys.shape[1:]:
        raise InputError(
            f"queries and keys must share feature shape, got {tuple(queries.shape[1:])} "
            f"and {tuple(keys.shape[1:])}"
        )
    check_positive_int(k, "k")
    if k > keys.shape[0]:
        raise InputError(f"k={k} exceeds the number of keys N={keys.shape[0]}")
    impl = _dispatch.op("knn").select(queries.device.type, backend)
    return impl.fn(queries.reshape(len(queries), -1), keys.reshape(len(keys), -1), k, metric,
                   tile_elems)


def _knn_chunked(q, x, k, metric, tile_elems):
    """Reference backend: chunked float32 candidate GEMM + running top-k + float64 re-rank."""
    M, N = q.shape[0], x.shape[0]
    largest = metric != "l2"
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if metric == "l2":
        mu = x.double().mean(0).to(x.dtype)
        qc, xc = (q - mu).float(), (x - mu).float()
    else:
        qc, xc = q.float(), x.float()
    kc = min(N, k + _EXTRA_CANDIDATES)
    n_tile = max(1, min(N, tile_elems // max(1, min(M, 1024))))
    m_chunk = max(1, min(M, tile_elems // n_tile))
    fill = float("-inf") if largest else float("inf")
    values = torch.empty(M, k, dtype=torch.float32, device=q.device)
    indices = torch.empty(M, k, dtype=torch.int64, device=q.device)
    x_sq = (xc * xc).sum(1)
    for m0 in range(0, M, m_chunk):
        qm = qc[m0 : m0 + m_chunk]
        best_v = torch.full((len(qm), kc), fill, dtype=torch.float32, device=q.device)
        best_i = torch.full((len(qm), kc), -1, dtype=torch.int64, device=q.device)
        for n0 in range(0, N, n_tile):
            xt = xc[n0 : n0 + n_tile]
            ip = qm @ xt.T  # [m, t]
            # ‖q‖² is constant per row, so ‖x‖² − 2⟨q,x⟩ ranks like ‖q − x‖²
            scores = x_sq[n0 : n0 + n_tile] - 2 * ip if metric == "l2" else ip
            best_v, best_i = merge(best_v, best_i, scores, n0, largest)
        # exact re-rank of the candidates in float64
        cand = x[best_i].double()  # [m, kc, d]
        qd = q[m0 : m0 + m_chunk].double()[:, None, :]
        exact = ((qd - cand) ** 2).sum(-1) if metric == "l2" else (qd * cand).sum(-1)
        order = torch.sort(exact, dim=1, descending=largest, stable=True).indices[:, :k]
        values[m0 : m0 + m_chunk] = exact.gather(1, order).float()
        indices[m0 : m0 + m_chunk] = best_i.gather(1, order)
    return values, indices


_dispatch.op("knn").register("reference", ("cpu", "cuda"), _knn_chunked)
