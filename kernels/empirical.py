"""Empirical optimal denoiser, flash-decoding style: split over the training set.

Formula: D_M(y; σ) = Σ_i softmax_i(−‖y − x_i‖²/(2σ²)) x_i,  y [M, D], x [N, D], σ [M].

Program (pid_m, pid_s) owns BLOCK_M queries and the training rows of split s. For each
training block of BLOCK_N rows:
  1. logits: S = (⟨y − μ, x − μ⟩ − ½‖x − μ‖²)/σ² accumulated over the feature dim in
     BLOCK_D chunks (d in the thousands does not fit one tile);
  2. online softmax within the split: m' = max(m, max_j S), α = exp(m − m'),
     p = exp(S − m'), l = α·l + Σ p;
  3. accumulate over d: for each BLOCK_D chunk, acc[:, chunk] = α·acc[:, chunk] + p·x[:, chunk]
     (read-modify-write of the split's partial accumulator, [S, M, D] in the inputs'
     dtype, which stays
     in L2 for one program's rows).
The launcher merges the splits in float64 (flash-decoding reduction):
  m* = max_s m_s, w_s = exp(m_s − m*), D = Σ_s w_s·acc_s / Σ_s w_s·l_s.

Numerics:
- the inputs' dtype, float32 or float64: pydiffgen.ops.empirical runs this kernel in
  float64 only, as the dense pass of rows its bf16 candidate pass leaves dense (σ
  comparable to the data's spread); float32 logits and sums cannot be certified to 1e-6
  relative (docs/science.md#empirical-optimum-numerics). tl.dot with
  input_precision="ieee" (never TF32).
- μ (the caller's centre of the training set) is subtracted inside the logit dot, and
  ‖x − μ‖² is computed once per call by the launcher (chunked).
- the weighted sum uses the raw x, so a lone dominant point returns x_i exactly.
- the launcher returns R² = max ‖x − μ‖², from which the caller bounds the logit error
  (pydiffgen.ops.exact.logit_error; kernels do not import ops).
- masked loads fill 0; masked training columns get logit −inf.

The launcher takes torch tensors on a CUDA device, or on the CPU when TRITON_INTERPRET=1
was set before triton was imported (the interpreter runs programs in numpy; slow).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import interpreted


@triton.jit
def empirical_split_kernel(
    y_ptr, x_ptr, mu_ptr, sq_ptr, iv_ptr, acc_ptr, max_ptr, sum_ptr,
    M, N, D, n_per_split,
    stride_ym, stride_xn, stride_as, stride_am,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    mask_m = offs_m < M
    offs_d = tl.arange(0, BLOCK_D)
    iv = tl.load(iv_ptr + offs_m, mask=mask_m, other=1.0)  # 1/σ²  [BM]
    dt = acc_ptr.dtype.element_ty  # float32, or float64 for the exact dense pass
    m_i = tl.full((BLOCK_M,), float("-inf"), dt)
    l_i = tl.zeros((BLOCK_M,), dt)
    n_start = pid_s * n_per_split
    n_end = tl.minimum(N, n_start + n_per_split)
    acc_base = acc_ptr + pid_s * stride_as + offs_m[:, None] * stride_am
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)  # [BN]
        mask_n = offs_n < n_end
        s = tl.zeros((BLOCK_M, BLOCK_N), dt)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + offs_d
            mask_d = d < D
            mu = tl.load(mu_ptr + d, mask=mask_d, other=0.0)  # [BD]
            yb = tl.load(y_ptr + offs_m[:, None] * stride_ym + d[None, :],
                         mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # y − μ  [BM, BD]
            xb = tl.load(x_ptr + offs_n[:, None] * stride_xn + d[None, :],
                         mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # [BN, BD]
            xb = tl.where(mask_n[:, None] & mask_d[None, :], xb - mu[None, :], 0.0)
            s = tl.dot(yb, tl.trans(xb), s, input_precision="ieee")  # [BM, BN]
        sq = tl.load(sq_ptr + offs_n, mask=mask_n, other=0.0)  # ‖x − μ‖²  [BN]
        logits = (s - 0.5 * sq[None, :]) * iv[:, None]
        logits = tl.where(mask_n[None, :], logits, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(logits - m_new[:, None])  # [BM, BN]
        l_i = l_i * alpha + tl.sum(p, 1)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + offs_d
            mask_d = d < D
            xb = tl.load(x_ptr + offs_n[:, None] * stride_xn + d[None, :],
                         mask=mask_n[:, None] & mask_d[None, :], other=0.0)  # raw x [BN, BD]
            amask = mask_m[:, None] & mask_d[None, :]
            acc = tl.load(acc_base + d[None, :], mask=amask, other=0.0)  # [BM, BD]
            acc = tl.dot(p, xb, acc * alpha[:, None], input_precision="ieee")
            tl.store(acc_base + d[None, :], acc, mask=amask)
        m_i = m_new
    tl.store(max_ptr + pid_s * M + offs_m, m_i, mask=mask_m)
    tl.store(sum_ptr + pid_s * M + offs_m, l_i, mask=mask_m)


def empirical_denoiser(y, x, mu, sigma, *, splits: int | None = None, block_m: int = 32,
                       block_n: int | None = None, block_d: int | None = None):
    """(D_M [M, D] in y's dtype, R² = max_i ‖x_i − μ‖² as a float) for y [M, D], x [N, D]
    (any float dtype: computed in y's), μ [D] a point near the centre of x, sigma [M] > 0.

    ``splits``: how many training-set splits run in parallel (default: enough programs to
    fill the device, at least BLOCK_N rows each).
    """
    # On GPUs the fp32 "ieee" dots run on FMA units with their operands in registers:
    # 32 × 16 chunks keep them there (64 × 64 spills kilobytes per thread on sm_80/sm_90,
    # tools/compile_triton.py); the interpreter takes big blocks (fewer numpy programs).
    big = interpreted()
    block_n = block_n or (64 if big else 32)
    block_d = block_d or (64 if big else 16)
    M, D = y.shape
    N = x.shape[0]
    dt = torch.float64 if y.dtype == torch.float64 else torch.float32
    xf = x.to(dt).contiguous()
    mu = mu.to(dt)  # [D]
    yc = (y.to(dt) - mu).contiguous()  # [M, D]
    sq = torch.empty(N, dtype=dt, device=x.device)
    rows = max(1, (1 << 22) // D)
    for n0 in range(0, N, rows):  # ‖x − μ‖², chunked: no centred copy of x
        sq[n0 : n0 + rows] = (xf[n0 : n0 + rows] - mu).square().sum(1)
    sig = sigma.double()
    iv = (1.0 / sig.square()).to(dt).contiguous()
    m_blocks = triton.cdiv(M, block_m)
    if splits is None:
        sms = (torch.cuda.get_device_properties(x.device).multi_processor_count
               if x.is_cuda else 4)
        splits = max(1, min(triton.cdiv(N, block_n), triton.cdiv(4 * sms, m_blocks)))
    n_per_split = triton.cdiv(triton.cdiv(N, splits), block_n) * block_n
    splits = triton.cdiv(N, n_per_split)
    acc = torch.zeros(splits, M, D, dtype=dt, device=x.device)
    mx = torch.empty(splits, M, dtype=dt, device=x.device)
    sm = torch.empty(splits, M, dtype=dt, device=x.device)
    if M:
        empirical_split_kernel[(m_blocks, splits)](
            yc, xf, mu, sq, iv, acc, mx, sm,
            M, N, D, n_per_split,
            yc.stride(0), xf.stride(0), acc.stride(0), acc.stride(1),
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        )
    # flash-decoding merge of the splits, float64
    mx64 = mx.double()
    top = mx64.max(0).values  # [M]
    w = torch.exp(mx64 - top)  # [S, M]
    total = (w * sm.double()).sum(0)  # [M]
    out = (w[:, :, None] * acc.double()).sum(0) / total[:, None]
    return out.to(y.dtype), float(sq.max()) if N else 0.0
