"""Triton kernels of the fused GroupNorm → FiLM → SiLU (pydiffgen.ops.groupnorm_film_silu).

Formula, x viewed as [B, C, L] (L = H·W), G groups of Cg = C/G channels, N = Cg·L:
    μ, r = mean, 1/sqrt(var + eps) over x[b, g]          (biased variance)
    z = a_bc·x + d_bc,  a = r·w·(1 + s),  d = (β − μ·r·w)(1 + s) + t,   y = z·sigmoid(z)
Backward, dz = dy·σ(z)(1 + z(1 − σ(z))), S1 = Σ_L dz, S2 = Σ_L dz·x̂ per (b, c),
k = (1 + s)·w, A = Σ_{c∈g} k·S1, Bg = Σ_{c∈g} k·S2:
    dx = r·k·dz − r²·(Bg/N)·x + r·(μ·r·Bg − A)/N
    dshift = S1, dscale = w·S2 + β·S1, dweight = Σ_b (1 + s)·S2, dbias = Σ_b (1 + s)·S1.

Parallelism: not one program per (batch, group), which leaves most of the GPU idle at
batch 1. Every kernel runs on [BLOCK_C, BLOCK_L] tiles over a grid
(B × channel blocks, L splits): the reductions write per-(b, c, split) partial sums and a
finalize kernel per (b, g) combines them in float64 (a split reduction; no atomics, so
results are deterministic; 3 launches forward, 3 backward plus one sum over the batch
for dweight and dbias). The apply kernels derive each channel's a, d from
(mean, rstd, w, β, s, t) themselves. Tiles follow the memory layout: long in L for NCHW
(L contiguous), wide in C for channels-last (C contiguous), so loads coalesce in both;
any strides of the [B, C, L] view are accepted.

Numerics: per-tile sums in float32 of x − K, with K = x[b, g·Cg, 0] the group's first
element (a shift that removes the cancellation of E[x²] − μ² for data with a large mean),
combined across tiles and channels in float64. bf16 / fp16 are loaded as float32;
outputs are stored in x's dtype. Statistics, coefficients and parameter gradients are
float32 (float64 for float64 inputs, which the interpreter tests use for gradcheck).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _sigmoid(z):
    return 1.0 / (1.0 + tl.exp(-z))


@triton.jit
def _stats_kernel(x_ptr, part_ptr, C, L, Cg, total, sxb, sxc, sxl, n_cblk, n_split, chunk_l,
                  ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // n_cblk
    c = (pid % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BLOCK_C]
    cmask = c < C
    pivot_c = (c // Cg) * Cg  # the group's first channel: K = x[b, pivot_c, 0]
    K = tl.load(x_ptr + b * sxb + pivot_c * sxc, mask=cmask, other=0.0).to(ACC)
    acc_s = tl.zeros((BLOCK_C, BLOCK_L), dtype=ACC)
    acc_q = tl.zeros((BLOCK_C, BLOCK_L), dtype=ACC)
    l_start = split * chunk_l
    for l0 in range(l_start, l_start + chunk_l, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)
        m = cmask[:, None] & (l < L)[None, :]
        v = tl.load(x_ptr + b * sxb + c[:, None] * sxc + l[None, :] * sxl, mask=m, other=0.0)
        v = tl.where(m, v.to(ACC) - K[:, None], 0.0)
        acc_s += v
        acc_q += v * v
    out = (b * C + c) * n_split + split
    tl.store(part_ptr + out, tl.sum(acc_s, axis=1), mask=cmask)
    tl.store(part_ptr + total + out, tl.sum(acc_q, axis=1), mask=cmask)


@triton.jit
def _affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, t_ptr, b, c, cmask, C, G, Cg,
            ACC: tl.constexpr):
    """Per-channel (a, d, μ, r) of z = a·x + d for sample b and channels c."""
    grp = c // Cg
    mu = tl.load(mean_ptr + b * G + grp, mask=cmask, other=0.0).to(ACC)
    r = tl.load(rstd_ptr + b * G + grp, mask=cmask, other=0.0).to(ACC)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(ACC)
    bb = tl.load(b_ptr + c, mask=cmask, other=0.0).to(ACC)
    one_s = 1.0 + tl.load(s_ptr + b * C + c, mask=cmask, other=0.0).to(ACC)
    t = tl.load(t_ptr + b * C + c, mask=cmask, other=0.0).to(ACC)
    a = r * w * one_s
    d = (bb - mu * r * w) * one_s + t
    return a, d, mu, r, one_s * w


@triton.jit
def _stats_finalize_kernel(part_ptr, x_ptr, mean_ptr, rstd_ptr, C, L, G, Cg, total, n_split,
                           sxb, sxc, eps, BLOCK: tl.constexpr):
    """mean, rstd of one (b, g) from its Cg·n_split partial sums, combined in float64."""
    pid = tl.program_id(0)
    b = pid // G
    g = pid % G
    base = (b * C + g * Cg) * n_split  # the group's partials are contiguous
    n = Cg * n_split
    acc_s = tl.zeros((BLOCK,), dtype=tl.float64)
    acc_q = tl.zeros((BLOCK,), dtype=tl.float64)
    for i0 in range(0, n, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        m = i < n
        acc_s += tl.load(part_ptr + base + i, mask=m, other=0.0).to(tl.float64)
        acc_q += tl.load(part_ptr + total + base + i, mask=m, other=0.0).to(tl.float64)
    # Cg·L may be a compile-time 1 (Triton specialises integer arguments equal to 1)
    dm = tl.sum(acc_s, axis=0) / (Cg * L)
    var = tl.maximum(tl.sum(acc_q, axis=0) / (Cg * L) - dm * dm, 0.0)
    K = tl.load(x_ptr + b * sxb + (g * Cg) * sxc).to(tl.float64)
    tl.store(mean_ptr + pid, (K + dm).to(mean_ptr.dtype.element_ty))
    tl.store(rstd_ptr + pid, (1.0 / tl.sqrt(var + eps)).to(rstd_ptr.dtype.element_ty))


@triton.jit
def _apply_kernel(x_ptr, y_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, t_ptr, C, L, G, Cg,
                  sxb, sxc, sxl, syb, syc, syl, n_cblk,
                  ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // n_cblk
    c = (pid % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    cmask = c < C
    m = cmask[:, None] & (l < L)[None, :]
    a, d, _, _, _ = _affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, t_ptr, b, c, cmask, C, G,
                            Cg, ACC)
    v = tl.load(x_ptr + b * sxb + c[:, None] * sxc + l[None, :] * sxl, mask=m, other=0.0)
    z = a[:, None] * v.to(ACC) + d[:, None]
    y = z * _sigmoid(z)
    tl.store(y_ptr + b * syb + c[:, None] * syc + l[None, :] * syl,
             y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_reduce_kernel(x_ptr, dy_ptr, part_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, t_ptr,
                       C, L, G, Cg, total, sxb, sxc, sxl, sgb, sgc, sgl, n_cblk, n_split,
                       chunk_l, ACC: tl.constexpr, BLOCK_C: tl.constexpr,
                       BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // n_cblk
    c = (pid % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    a, d, mu, r, _ = _affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, t_ptr, b, c, cmask, C, G,
                             Cg, ACC)
    acc1 = tl.zeros((BLOCK_C, BLOCK_L), dtype=ACC)
    acc2 = tl.zeros((BLOCK_C, BLOCK_L), dtype=ACC)
    l_start = split * chunk_l
    for l0 in range(l_start, l_start + chunk_l, BLOCK_L):
        l = l0 + tl.arange(0, BLOCK_L)
        m = cmask[:, None] & (l < L)[None, :]
        v = tl.load(x_ptr + b * sxb + c[:, None] * sxc + l[None, :] * sxl, mask=m,
                    other=0.0).to(ACC)
        g = tl.load(dy_ptr + b * sgb + c[:, None] * sgc + l[None, :] * sgl, mask=m,
                    other=0.0).to(ACC)
        z = a[:, None] * v + d[:, None]
        sg = _sigmoid(z)
        dz = tl.where(m, g * sg * (1.0 + z * (1.0 - sg)), 0.0)
        acc1 += dz
        acc2 += dz * ((v - mu[:, None]) * r[:, None])
    out = (b * C + c) * n_split + split
    tl.store(part_ptr + out, tl.sum(acc1, axis=1), mask=cmask)
    tl.store(part_ptr + total + out, tl.sum(acc2, axis=1), mask=cmask)


@triton.jit
def _bwd_finalize_kernel(part_ptr, w_ptr, b_ptr, s_ptr, dshift_ptr, dscale_ptr, pw_ptr, pb_ptr,
                         AB_ptr, C, G, Cg, total, n_split, BLOCK_C: tl.constexpr,
                         BLOCK_S: tl.constexpr):
    """For one (b, g): S1, S2 per channel over the splits (float64) → dshift = S1,
    dscale = w·S2 + β·S1 and the per-sample terms (1 + s)·S2, (1 + s)·S1 of dweight, dbias;
    and A = Σ_c k·S1, Bg = Σ_c k·S2 (k = (1 + s)·w) for the dx kernel."""
    pid = tl.program_id(0)
    b = pid // G
    g = pid % G
    A = tl.zeros((BLOCK_C,), dtype=tl.float64)
    Bg = tl.zeros((BLOCK_C,), dtype=tl.float64)
    for c0 in range(0, Cg, BLOCK_C):
        j = c0 + tl.arange(0, BLOCK_C)
        cmask = j < Cg
        c = g * Cg + j
        s1 = tl.zeros((BLOCK_C,), dtype=tl.float64)
        s2 = tl.zeros((BLOCK_C,), dtype=tl.float64)
        for s0 in range(0, n_split, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            m = cmask[:, None] & (sp < n_split)[None, :]
            idx = (b * C + c)[:, None] * n_split + sp[None, :]
            s1 += tl.sum(tl.load(part_ptr + idx, mask=m, other=0.0).to(tl.float64), axis=1)
            s2 += tl.sum(tl.load(part_ptr + total + idx, mask=m, other=0.0).to(tl.float64),
                         axis=1)
        w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float64)
        bb = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float64)
        one_s = 1.0 + tl.load(s_ptr + b * C + c, mask=cmask, other=0.0).to(tl.float64)
        out_t = dshift_ptr.dtype.element_ty
        tl.store(dshift_ptr + b * C + c, s1.to(out_t), mask=cmask)
        tl.store(dscale_ptr + b * C + c, (w * s2 + bb * s1).to(out_t), mask=cmask)
        tl.store(pw_ptr + b * C + c, (one_s * s2).to(out_t), mask=cmask)
        tl.store(pb_ptr + b * C + c, (one_s * s1).to(out_t), mask=cmask)
        A += one_s * w * s1
        Bg += one_s * w * s2
    tl.store(AB_ptr + 2 * pid, tl.sum(A, axis=0))
    tl.store(AB_ptr + 2 * pid + 1, tl.sum(Bg, axis=0))


@triton.jit
def _bwd_dx_kernel(x_ptr, dy_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, t_ptr, AB_ptr,
                   C, L, G, Cg, sxb, sxc, sxl, sgb, sgc, sgl, sdb, sdc, sdl, n_cblk,
                   ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // n_cblk
    c = (pid % n_cblk) * BLOCK_C + tl.arange(0, BLOCK_C)
    l = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    cmask = c < C
    m = cmask[:, None] & (l < L)[None, :]
    a, d, mu, r, k = _affine(mean_ptr, rstd_ptr, w_ptr, b_ptr, s_ptr, t_ptr, b, c, cmask, C, G,
                             Cg, ACC)
    grp = c // Cg
    N = Cg * L
    A = tl.load(AB_ptr + 2 * (b * G + grp), mask=cmask, other=0.0).to(ACC) / N
    Bn = tl.load(AB_ptr + 2 * (b * G + grp) + 1, mask=cmask, other=0.0).to(ACC) / N
    # dx = r·k·dz − r²·(Bg/N)·x + r·(μ·r·Bg − A)/N
    c1 = r * k
    c2 = -r * r * Bn
    c3 = r * (mu * r * Bn - A)
    v = tl.load(x_ptr + b * sxb + c[:, None] * sxc + l[None, :] * sxl, mask=m,
                other=0.0).to(ACC)
    g = tl.load(dy_ptr + b * sgb + c[:, None] * sgc + l[None, :] * sgl, mask=m,
                other=0.0).to(ACC)
    z = a[:, None] * v + d[:, None]
    sg = _sigmoid(z)
    dz = g * sg * (1.0 + z * (1.0 - sg))
    dx = c1[:, None] * dz + c2[:, None] * v + c3[:, None]
    tl.store(dx_ptr + b * sdb + c[:, None] * sdc + l[None, :] * sdl,
             dx.to(dx_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------------------- launchers


def _view3(t: torch.Tensor) -> torch.Tensor:
    """[B, C, *] as [B, C, L] without a copy when the trailing dims merge (NCHW and
    channels-last both do); otherwise a contiguous copy."""
    B, C = t.shape[:2]
    try:
        return t.view(B, C, -1)
    except RuntimeError:
        return t.contiguous().view(B, C, -1)


def _blocks(v: torch.Tensor, C: int, L: int):
    """(BLOCK_C, BLOCK_L): long in the contiguous dimension."""
    if v.stride(2) == 1 or L == 1:
        return min(4, triton.next_power_of_2(C)), min(256, max(16, triton.next_power_of_2(L)))
    return min(32, max(2, triton.next_power_of_2(C))), min(32, max(16,
                                                              triton.next_power_of_2(L)))


def _splits(B: int, n_cblk: int, L: int, BLOCK_L: int, device) -> tuple[int, int]:
    """(n_split, chunk_l): enough programs to fill the device (≈ 4 per SM) at any batch."""
    tiles = triton.cdiv(L, BLOCK_L)
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4
    n_split = max(1, min(tiles, triton.cdiv(target, B * n_cblk)))
    chunk_tiles = triton.cdiv(tiles, n_split)
    n_split = triton.cdiv(tiles, chunk_tiles)
    return n_split, chunk_tiles * BLOCK_L


def _acc(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def forward(x, num_groups, weight, bias, scale, shift, eps):
    """Returns (y [x's shape, dtype and layout], mean [B, G], rstd [B, G])."""
    B, C = x.shape[:2]
    G, Cg = num_groups, C // num_groups
    acc = _acc(x)
    y = torch.empty_like(x)  # x's layout when x is dense (NCHW, channels-last), else NCHW
    mean = torch.zeros(B, G, dtype=acc, device=x.device)
    rstd = torch.zeros(B, G, dtype=acc, device=x.device)
    if x.numel() == 0:
        return y, mean, rstd
    v = _view3(x)
    try:
        yv = y.view(B, C, -1)
    except RuntimeError:  # a dense layout whose H, W do not merge
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        yv = y.view(B, C, -1)
    L = v.shape[2]
    BC, BL = _blocks(v, C, L)
    n_cblk = triton.cdiv(C, BC)
    n_split, chunk_l = _splits(B, n_cblk, L, BL, x.device)
    total = B * C * n_split
    part = torch.empty(2 * total, dtype=acc, device=x.device)
    ACC = tl.float64 if acc == torch.float64 else tl.float32
    _stats_kernel[(B * n_cblk, n_split)](
        v, part, C, L, Cg, total, *v.stride(), n_cblk, n_split, chunk_l,
        ACC=ACC, BLOCK_C=BC, BLOCK_L=BL)
    _stats_finalize_kernel[(B * G,)](
        part, v, mean, rstd, C, L, G, Cg, total, n_split, v.stride(0), v.stride(1), eps,
        BLOCK=min(1024, max(16, triton.next_power_of_2(Cg * n_split))))
    _apply_kernel[(B * n_cblk, triton.cdiv(L, BL))](
        v, yv, mean, rstd, weight, bias, scale, shift, C, L, G, Cg, *v.stride(), *yv.stride(),
        n_cblk, ACC=ACC, BLOCK_C=BC, BLOCK_L=BL)
    return y.view(x.shape), mean, rstd


def backward(grad, x, mean, rstd, num_groups, weight, bias, scale, shift):
    """Returns (dx, dweight [C], dbias [C], dscale [B, C], dshift [B, C])."""
    B, C = x.shape[:2]
    G, Cg = num_groups, C // num_groups
    acc = _acc(x)
    if x.numel() == 0:
        z = torch.zeros(B, C, dtype=acc, device=x.device)
        return torch.empty_like(x), z.sum(0), z.sum(0), z, z.clone()
    v = _view3(x)
    g = _view3(grad.to(x.dtype))
    L = v.shape[2]
    dx = torch.empty_like(v)
    BC, BL = _blocks(v, C, L)
    n_cblk = triton.cdiv(C, BC)
    n_split, chunk_l = _splits(B, n_cblk, L, BL, x.device)
    ACC = tl.float64 if acc == torch.float64 else tl.float32
    mean, rstd = mean.contiguous(), rstd.contiguous()
    weight, bias = weight.contiguous(), bias.contiguous()
    scale, shift = scale.contiguous(), shift.contiguous()
    total = B * C * n_split
    part = torch.empty(2 * total, dtype=acc, device=x.device)
    _bwd_reduce_kernel[(B * n_cblk, n_split)](
        v, g, part, mean, rstd, weight, bias, scale, shift, C, L, G, Cg, total,
        *v.stride(), *g.stride(), n_cblk, n_split, chunk_l,
        ACC=ACC, BLOCK_C=BC, BLOCK_L=BL)
    # dshift, dscale [B, C] and the per-sample terms of dweight and dbias
    dshift, dscale, pw, pb = (torch.empty(B, C, dtype=acc, device=x.device) for _ in range(4))
    AB = torch.empty(B * G * 2, dtype=torch.float64, device=x.device)
    _bwd_finalize_kernel[(B * G,)](
        part, weight, bias, scale, dshift, dscale, pw, pb, AB, C, G, Cg, total,
        n_split, BLOCK_C=min(64, max(2, triton.next_power_of_2(Cg))),
        BLOCK_S=min(64, max(2, triton.next_power_of_2(n_split))))
    _bwd_dx_kernel[(B * n_cblk, triton.cdiv(L, BL))](
        v, g, dx, mean, rstd, weight, bias, scale, shift, AB, C, L, G, Cg, *v.stride(),
        *g.stride(), *dx.stride(), n_cblk, ACC=ACC, BLOCK_C=BC, BLOCK_L=BL)
    return dx.view(x.shape), pw.sum(0), pb.sum(0), dscale, dshift
