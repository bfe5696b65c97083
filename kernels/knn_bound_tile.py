"""Certified low-precision score tile of exact kNN: bf16 (or int8) GEMM tile + bound epilogue.

Formula (query i, key j; "smaller is better" for every metric, see csrc/cpu/knn.cpp):
    G̃[i, j] = ⟨q̃_i, x̃_j⟩          bfloat16 inputs, tl.dot with a float32 accumulator
                                   (int8 inputs: int32 accumulator, exact; then float32)
    s̃[i, j] = a_j − W·G̃[i, j]      (l2: a_j = ‖x_p‖², W = 2; ip / cosine: a_j = 0, W = 1)
    e[i, j] = SAFETY·(A_i·P_j + B_i·dx_j + CG·|G̃| + CA·|a_j| + ETA)
    lo = s̃ − e,  hi = s̃ + e        (float32 outputs, [M, N])
A_i = W(dq_i + γ‖q̃_i‖), B_i = W‖q̃_i‖, P_j = ‖x̃_j‖ + dx_j, dq / dx the norms of the
rounding of the prepared rows to bfloat16 plus their preparation error: the bound and why
it is rigorous are derived in csrc/cpu/knn.cpp (Cauchy–Schwarz on the exact identity
⟨q*, x*⟩ = ⟨q̃, x̃⟩ + ⟨Δq, x*⟩ + ⟨q̃, Δx⟩, plus the accumulation error γ‖q̃‖‖x̃‖).

Numerics:
- products of bfloat16 values are exact in float32. Tensor-core float32 accumulation is
  not IEEE round-to-nearest (Fasi, Higham, Mikaitis & Pranesh 2021: truncated, a few
  alignment bits): the caller takes γ with a unit roundoff of 2^-20 (16× float32's), which
  covers that behaviour with room to spare; γ·‖q̃‖‖x̃‖ is far below the bf16 rounding term.
- the epilogue runs in float32; its roundings and those of its float64 inputs (A, B, P,
  dx) to float32 are covered by SAFETY = 1 + 64·2^-24 and by
  the CG, CA terms (see the C++ file).
- masked loads fill 0: ragged M, N, D edges add nothing; lo/hi of padding are not stored.
The caller keeps, per query, the k smallest hi (τ = the k-th) and the candidates with
lo ≤ τ (pydiffgen.ops.topk_merge on the GPU), then re-ranks them in float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreted


@triton.jit
def bound_tile_kernel(
    q_ptr, x_ptr, a_ptr, p_ptr, dx_ptr, A_ptr, B_ptr, lo_ptr, hi_ptr,
    M, N, D,
    stride_qm, stride_xn, stride_om,
    W: tl.constexpr, CG: tl.constexpr, CA: tl.constexpr, ETA: tl.constexpr,
    SAFETY: tl.constexpr, INPUT_PRECISION: tl.constexpr, IS_INT8: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, BLOCK_D)  # [BD]
    mask_m = offs_m < M
    mask_n = offs_n < N
    if IS_INT8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + offs_d
        mask_d = d < D
        q = tl.load(q_ptr + offs_m[:, None] * stride_qm + d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # [BM, BD] bf16
        x = tl.load(x_ptr + offs_n[:, None] * stride_xn + d[None, :],
                    mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [BN, BD] bf16
        if IS_INT8:
            # out_dtype: Triton 3.6 (the GPU machines') takes float32 unless told
            acc = tl.dot(q, tl.trans(x), acc, out_dtype=tl.int32)  # [BM, BN] int32, exact
        else:
            acc = tl.dot(q, tl.trans(x), acc, input_precision=INPUT_PRECISION)  # [BM, BN] f32
    g = acc.to(tl.float32)  # int32 → float32 rounds above 2^24: the CG term covers it
    a = tl.load(a_ptr + offs_n, mask=mask_n, other=0.0)  # [BN]
    p = tl.load(p_ptr + offs_n, mask=mask_n, other=0.0)
    dx = tl.load(dx_ptr + offs_n, mask=mask_n, other=0.0)
    A = tl.load(A_ptr + offs_m, mask=mask_m, other=0.0)  # [BM]
    B = tl.load(B_ptr + offs_m, mask=mask_m, other=0.0)
    s = a[None, :] - W * g
    e = SAFETY * (A[:, None] * p[None, :] + B[:, None] * dx[None, :] + CG * tl.abs(g)
                  + CA * tl.abs(a)[None, :] + ETA)
    out = offs_m[:, None] * stride_om + offs_n[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    tl.store(lo_ptr + out, s - e, mask=mask)
    tl.store(hi_ptr + out, s + e, mask=mask)


def bound_tile(qg, xg, a, p, dx, A, B, *, w: float, cg: float, ca: float, eta: float,
               safety: float):
    """(lo, hi) float32 [M, N] for bf16 rows qg [M, D], xg [N, D], or int8 rows (8-bit
    images minus 128: an exact int32 dot; see module doc)."""
    if qg.ndim != 2 or xg.ndim != 2 or qg.shape[1] != xg.shape[1]:
        raise ValueError(f"qg [M, D] and xg [N, D] must share D, got {tuple(qg.shape)}, "
                         f"{tuple(xg.shape)}")
    is_int8 = qg.dtype == torch.int8
    if is_int8:
        # 8-bit images shifted by 128: the int32 dot is exact while 2^14·D < 2^31
        if xg.dtype != torch.int8 or qg.shape[1] >= 1 << 17:
            raise ValueError("int8 tiles need int8 qg and xg and D < 2^17")
        qg, xg = qg.contiguous(), xg.contiguous()
    else:
        # the interpreter mis-reads bfloat16 buffers: there the (exactly) bf16-valued rows go
        # in as float32, whose "ieee" dot has the same exact products and float32 accumulation
        row_dtype = torch.float32 if interpreted() else torch.bfloat16
        qg = qg.to(torch.bfloat16).to(row_dtype).contiguous()
        xg = xg.to(torch.bfloat16).to(row_dtype).contiguous()
    M, D = qg.shape
    N = xg.shape[0]
    lo = torch.empty(M, N, dtype=torch.float32, device=qg.device)
    hi = torch.empty_like(lo)
    if M == 0 or N == 0:
        return lo, hi
    f32 = [t.float().contiguous() for t in (a, p, dx, A, B)]
    bm, bn, bd, warps = (32, 32, 32, 4) if interpreted() else (128, 128, 64, 8)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    bound_tile_kernel[grid](
        qg, xg, *f32, lo, hi, M, N, D, qg.stride(0), xg.stride(0), lo.stride(0),
        W=w, CG=cg, CA=ca, ETA=eta, SAFETY=safety, INPUT_PRECISION="ieee", IS_INT8=is_int8,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps,
        num_stages=1 if interpreted() else 3,
    )
    return lo, hi
