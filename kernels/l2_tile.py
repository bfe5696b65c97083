"""Score tile of exact kNN: one query block × one key block per program.

Formula (per query i, key j, features d):
    metric "l2":  S[i, j] = ‖x_j‖² − 2 ⟨q_i, x_j⟩      (= ‖q_i − x_j‖² − ‖q_i‖²)
    metric "ip":  S[i, j] = ⟨q_i, x_j⟩                  (cosine: on normalized inputs)
‖q_i‖² is constant along a row, so S ranks keys exactly as the squared distance does; it
only feeds the running top-k (pydiffgen.ops.topk_merge) of candidates.

Numerics:
- inputs are float32 (the launcher casts); the dot product runs over the feature dim in
  BLOCK_D chunks with tl.dot and a float32 accumulator; ‖x_j‖² is passed in (computed
  once per key set by the caller), never recomputed per query block.
- ``precision="ieee"`` (default) is a true fp32 dot, matching ``q @ x.T`` in fp32;
  ``"tf32"`` / ``"tf32x3"`` use tensor cores on GPUs (faster, ~1e-3 / ~1e-6 relative).
  Either way the caller re-ranks the candidates in float64, so precision only decides
  how many extra candidates are needed to contain the true neighbours.
- the caller subtracts the key set's mean first (DESIGN.md numerics), which keeps the
  cancellation in ‖x‖² − 2⟨q, x⟩ small for data far from the origin.
- masked loads fill 0, so ragged M, N, D edges add nothing to the dot products.

The launcher takes torch tensors on a CUDA device, or on the CPU when TRITON_INTERPRET=1
was set before triton was imported (the interpreter runs programs in numpy; slow).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreted

PRECISIONS = ("ieee", "tf32", "tf32x3")


@triton.jit
def score_tile_kernel(
    q_ptr, x_ptr, x_sq_ptr, out_ptr,
    M, N, D,
    stride_qm, stride_qd, stride_xn, stride_xd, stride_om, stride_on,
    ALPHA: tl.constexpr, WITH_NORM: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    mask_m = offs_m < M
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + offs_d
        mask_d = d < D
        q = tl.load(q_ptr + offs_m[:, None] * stride_qm + d[None, :] * stride_qd,
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # [BM, BD]
        x = tl.load(x_ptr + offs_n[:, None] * stride_xn + d[None, :] * stride_xd,
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [BN, BD]
        acc = tl.dot(q, tl.trans(x), acc, input_precision=PRECISION)  # [BM, BN]
    scores = acc * ALPHA
    if WITH_NORM:
        x_sq = tl.load(x_sq_ptr + offs_n, mask=mask_n, other=0.0)  # [BN]
        scores = x_sq[None, :] + scores
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on, scores,
             mask=mask_m[:, None] & mask_n[None, :])


def score_tile(q, x, x_sq=None, metric: str = "l2", *, precision: str = "ieee", out=None,
               block_m: int | None = None, block_n: int | None = None,
               block_d: int | None = None):
    """Scores [M, N] float32 of queries q [M, D] against keys x [N, D] (see module doc).

    metric "l2" needs ‖x_j‖² (computed here in float32 when ``x_sq`` is None); "ip" ignores
    it. ``out`` may be a preallocated float32 [M, N] tensor (any strides).
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric must be 'l2' or 'ip', got {metric!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if q.ndim != 2 or x.ndim != 2 or q.shape[1] != x.shape[1]:
        raise ValueError(f"q [M, D] and x [N, D] must share D, got {tuple(q.shape)}, "
                         f"{tuple(x.shape)}")
    q = q.float()
    x = x.float()
    M, D = q.shape
    N = x.shape[0]
    with_norm = metric == "l2"
    if with_norm and x_sq is None:
        x_sq = (x * x).sum(1)
    x_sq = x_sq.float().contiguous() if with_norm else x  # unused pointer when "ip"
    if out is None:
        out = torch.empty(M, N, dtype=torch.float32, device=q.device)
    if M == 0 or N == 0:
        return out
    if D == 0:
        return out.copy_(x_sq[None, :].expand(M, N) if with_norm else torch.zeros(M, N))
    if interpreted():  # big blocks: fewer numpy programs
        bm, bn, bd = 32, 32, 32
    else:
        bm, bn, bd = 64, 64, 32
    bm, bn, bd = block_m or bm, block_n or bn, block_d or bd
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    score_tile_kernel[grid](
        q, x, x_sq, out, M, N, D,
        q.stride(0), q.stride(1), x.stride(0), x.stride(1), out.stride(0), out.stride(1),
        ALPHA=-2.0 if with_norm else 1.0, WITH_NORM=with_norm, PRECISION=precision,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
    )
    return out
