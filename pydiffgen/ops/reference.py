"""Pure-PyTorch ground truth for every op: simple enough to trust, chunked where it must be."""

from __future__ import annotations

import torch


def topk_merge(values, indices, tile, offset: int, largest: bool):
    """Merge a score tile into a running top-k.

    values, indices: [M, k] running best (sorted, empty slots = ±inf and index -1);
    tile: [M, T] scores of keys offset .. offset+T-1. Returns the best k of the union,
    sorted (ascending unless ``largest``), ties broken by the lower key index.
    """
    M, k = values.shape
    T = tile.shape[1]
    tile_idx = torch.arange(offset, offset + T, device=tile.device, dtype=torch.int64)
    v = torch.cat([values, tile.to(values.dtype)], dim=1)
    i = torch.cat([indices, tile_idx.expand(M, T)], dim=1)
    by_index = torch.argsort(i, dim=1, stable=True)
    v, i = v.gather(1, by_index), i.gather(1, by_index)
    order = torch.sort(v, dim=1, descending=largest, stable=True).indices[:, :k]
    return v.gather(1, order), i.gather(1, order)


def knn_bruteforce(queries, keys, k: int, metric: str = "l2"):
    """float64 brute force over the full [M, N] matrix: the test oracle, small inputs only."""
    q = queries.reshape(queries.shape[0], -1).double()
    x = keys.reshape(keys.shape[0], -1).double()
    if metric == "l2":
        d = ((q[:, None, :] - x[None, :, :]) ** 2).sum(-1)
        largest = False
    elif metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-300)
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-300)
        d, largest = q @ x.T, True
    else:
        d, largest = q @ x.T, True
    fill = float("-inf") if largest else float("inf")
    v0 = torch.full((q.shape[0], k), fill, dtype=torch.float64)
    i0 = torch.full((q.shape[0], k), -1, dtype=torch.int64)
    return topk_merge(v0, i0, d, 0, largest)
