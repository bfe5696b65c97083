"""Near-duplicate removal by correlation of pooled images (Kadkhodaie et al. 2024, §1).

Streamed: images are handled in chunks; each chunk is compared with the kept set by a
top-1 inner-product search (``pydiffgen.ops.knn``) and with itself by a chunk × chunk
Gram matrix, so memory stays O(N·d + chunk²) instead of O(N²).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import check_positive_int, check_tensor
from ..errors import InputError
from ..ops import knn


def correlation_features(x: torch.Tensor, pool: int = 20) -> torch.Tensor:
    """Unit-norm, zero-mean features ``[N, D]`` float32 whose inner products are correlations.

    x [N, C, H, W] (or [N, H, W]) is adaptive-average-pooled to pool × pool (images smaller
    than that are used as they are), flattened and centred. A constant image has no
    defined correlation; after centring it is the zero signal, the same for every
    constant image, so it gets a unit coordinate of its own: constant images correlate 1
    with each other and 0 with everything else, never NaN. [N, ...] with other ranks is
    flattened without pooling.
    """
    check_tensor(x, "x", min_ndim=2)
    check_positive_int(pool, "pool")
    f = x.detach().to(torch.float64)
    if f.ndim == 3:
        f = f[:, None]
    if f.ndim == 4 and f.shape[-2] >= pool and f.shape[-1] >= pool:
        f = F.adaptive_avg_pool2d(f, pool)
    f = f.reshape(len(f), -1)
    scale = f.abs().amax(dim=1)
    f = f - f.mean(dim=1, keepdim=True)
    norm = f.norm(dim=1)
    # relative test: pooled float images that are "constant" keep rounding residue
    constant = norm <= 1e-6 * scale * f.shape[1] ** 0.5
    f = torch.where(constant[:, None], 0.0, f / norm.clamp_min(1e-300)[:, None])
    return torch.cat([f, constant[:, None].to(f.dtype)], dim=1).to(torch.float32)


def deduplicate(x: torch.Tensor, threshold: float = 0.95, pool: int = 20,
                return_index: bool = False, *, chunk_size: int = 1024, search=None):
    """Drop near-duplicates: one image of every pair with |correlation| > ``threshold``.

    x [N, C, H, W]. Greedy in order, so the earlier image of a pair is the one kept: image
    i is dropped when its |correlation| with an already kept image exceeds the threshold
    (a negated copy counts as a duplicate). Correlations are taken between pooled,
    mean-removed images (:func:`correlation_features`). ``chunk_size`` images are handled
    at once (memory ≈ chunk_size² + N·D floats); the result does not depend on it.
    Returns the kept images [K, C, H, W], and with ``return_index`` also their indices
    int64 [K] (ascending). ``search``: a function with the signature of
    ``pydiffgen.ops.knn`` (default), e.g. a sharded search.
    """
    search = knn if search is None else search
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must lie in (0, 1), got {threshold!r}")
    check_positive_int(chunk_size, "chunk_size")
    feats = correlation_features(x, pool)  # [N, D]
    N = len(feats)
    kept_feats = torch.empty_like(feats)
    kept_index = torch.empty(N, dtype=torch.int64)
    n_kept = 0
    for start in range(0, N, chunk_size):
        fb = feats[start : start + chunk_size]  # [b, D]
        candidate = torch.ones(len(fb), dtype=torch.bool, device=fb.device)
        if n_kept:
            # |⟨f, k⟩| maximised over kept k = max of the top-1 ip for f and for −f
            best, _ = search(torch.cat([fb, -fb]), kept_feats[:n_kept], 1, metric="ip")
            candidate = best[:, 0].view(2, -1).amax(dim=0) <= threshold
        # knn returns float64 values rounded to float32; round the Gram matrix the same way
        # so a pair's verdict does not depend on whether a chunk boundary separates it
        gram = (fb.double() @ fb.double().T).float().abs()  # [b, b]
        conflict = ((gram > threshold).tril(diagonal=-1) & candidate[None, :]).cpu().numpy()
        keep = candidate.cpu().numpy().copy()
        for i in conflict.any(axis=1).nonzero()[0]:
            # only rows with an earlier clashing candidate need the sequential pass
            if keep[i] and (conflict[i] & keep).any():
                keep[i] = False
        keep = torch.from_numpy(keep)
        k = int(keep.sum())
        kept_feats[n_kept : n_kept + k] = fb[keep.to(fb.device)]
        kept_index[n_kept : n_kept + k] = torch.arange(start, start + len(fb))[keep]
        n_kept += k
    index = kept_index[:n_kept].to(x.device)
    kept = x[index]
    return (kept, index) if return_index else kept
