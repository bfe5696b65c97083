"""Certified candidate pass of exact knn on the GPU (and its torch twin, for any device).

The same algorithm and bound as the CPU kernel (csrc/cpu/knn.cpp, where the bound is
derived): per key tile, a bfloat16 GEMM gives approximate scores s̃ ("smaller is better")
and a rigorous per-pair bound e ≥ |s̃ − s|; per query the running k smallest upper bounds
s̃ + e give τ ≥ the true k-th best score, and every key with lower bound s̃ − e ≤ τ is a
candidate. On the GPU both running sets are kept by ``topk_merge`` (CUDA block-wide
select): the k smallest hi, and the ``capacity`` smallest lo. All keys with lo ≤ τ are
among the ``capacity`` smallest lo unless that buffer's last entry is itself ≤ τ: then
the row overflows and is redone in float64, and rows still overflowing (thousands of
exact ties) by a float64 brute force over key chunks.

Tile scores come from ``score_fn(qg, xg, a, p, dx, A, B, consts) -> (lo, hi)``: the Triton
kernel pydiffgen.kernels.knn_bound_tile (custom op ``pydiffgen::knn_bound_tile``) or
``torch_bound_tile`` (a float32 matmul of the bf16-valued rows: products exact, so the
same bound holds; also the float64 pass).
"""

from __future__ import annotations

import torch

from .topk import merge

U32 = 2.0**-24
U64 = 2.0**-53
# float32 accumulation of a tensor-core dot product: not IEEE round-to-nearest (truncating
# adds, few alignment bits; Fasi et al. 2021), so 16× the float32 unit roundoff
U_ACC_TC = 2.0**-20


def prepare(x, mu, metric, gemm_dtype):
    """x̃ = x* rounded to gemm_dtype, with ‖x̃‖, dx = ‖x_p − x̃‖ + u_p‖x_p‖ and a (l2: ‖x_p‖²).
    x* = x − μ (l2), x/‖x‖ (cosine), x (ip), formed in float64 and rounded once to the
    preparation dtype (float32, or float64 in the float64 pass)."""
    D = x.shape[1]
    if gemm_dtype == torch.int8:
        # 8-bit images: x' = x − 128 exactly (the centre is this fixed shift); ip keys carry
        # −128·Σx' (⟨q, x⟩ = ⟨q', x'⟩ + 128Σx' + terms constant per query)
        xs = x.to(torch.int16) - 128
        xsd = xs.double()
        zero = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        a = xsd.square().sum(1) if metric == "l2" else -128 * xsd.sum(1)
        return xs.to(torch.int8), zero, zero, a
    prep = torch.float64 if gemm_dtype == torch.float64 else torch.float32
    u_p = (1.01 * (U64 if prep == torch.float64 else U32)) + (D + 4) * U64
    xd = x.double()
    if metric == "l2":
        xd = xd - mu.double()
    elif metric == "cosine":
        xd = xd / torch.linalg.vector_norm(xd, dim=1, keepdim=True).clamp_min(1e-300)
    xp = xd.to(prep)
    xg = xp.to(gemm_dtype)
    xpd, xgd = xp.double(), xg.double()
    norm = torch.linalg.vector_norm(xgd, dim=1) * (1 + 1e-9)
    dx = (torch.linalg.vector_norm(xpd - xgd, dim=1)
          + u_p * torch.linalg.vector_norm(xpd, dim=1)) * (1 + 1e-9)
    a = xpd.square().sum(1) if metric == "l2" else torch.zeros_like(norm)
    return xg, norm, dx, a


def prepare_keys(x, centre, metric, gemm_dtype, rows_elems: int = 1 << 22):
    """``prepare`` of a whole key set x [N, D], in row chunks of ≤ rows_elems entries so
    the float64 temporaries stay small (a GPU key set may be 10⁹ entries); the tuple
    (x̃ [N, D], ‖x̃‖ [N], dx [N], a [N]) that ``candidates`` searches."""
    step = max(1, rows_elems // max(1, x.shape[1]))
    parts = [prepare(x[n0 : n0 + step], centre, metric, gemm_dtype)
             for n0 in range(0, x.shape[0], step)]
    return tuple(torch.cat(col) for col in zip(*parts))


def constants(metric, D, gemm_dtype):
    """(w, γ, cg, ca, eta, safety) of the bound for this pass."""
    w = 2.0 if metric == "l2" else 1.0
    if gemm_dtype == torch.int8:
        # exact int32 dot; float32 epilogue: G to float32 (u|G|), s̃ (u(a + w|G|)), lo/hi
        return w, 0.0, 3 * w * U32, 4 * U32, 2.0**-100, 1 + 64 * U32
    f64 = gemm_dtype == torch.float64
    u_acc = U64 if f64 else U_ACC_TC
    u_eval = U64 if f64 else U32
    u_p = (1.01 * (U64 if f64 else U32)) + (D + 4) * U64
    gamma = (D + 2) * u_acc / (1 - (D + 2) * u_acc)
    cg = 2 * w * u_eval
    ca = 3 * u_p + 4 * u_eval
    # safety: ≤ 8 float32 roundings of the epilogue and ≤ 4 of its float64 inputs
    return w, gamma, cg, ca, 2.0**-100, 1 + 64 * U32


def torch_bound_tile(qg, xg, a, p, dx, A, B, w, cg, ca, eta, safety):
    """(lo, hi) of one tile with torch: G in float32 (exact products of bf16 values) or
    float64 in the float64 pass; the epilogue in that dtype, in place (its roundings are
    those the safety factor covers: A·P + B·dx is one rank-2 addmm)."""
    # int8 rows in float64: the dot of integers is exact there
    dt = torch.float64 if qg.dtype in (torch.float64, torch.int8) else torch.float32
    G = qg.to(dt) @ xg.to(dt).T  # [m, t]
    a = a.to(dt)
    AB = torch.stack([A, B], 1).to(dt)  # [m, 2]
    pdx = torch.stack([p, dx]).to(dt)  # [2, t]
    e = torch.addmm((ca * a.abs() + eta)[None, :], AB, pdx)  # A·P + B·dx + ca|a| + η
    e.add_(G.abs(), alpha=cg).mul_(safety)
    s = G.mul_(-w).add_(a[None, :])  # a − w·G (w·G exact: w = 1 or 2)
    return s - e, s.add_(e)


def candidates(q, keys, k, metric, tile_elems, capacity, gemm_dtype, score_fn, centre):
    """Certified candidates cand [M, C ≤ capacity] (−1: none) and overflow [M] (see module
    doc) of the queries q [M, D] against keys = ``prepare(x, centre, metric, gemm_dtype)``
    of the whole key set [N, D] (prepared once: ``pydiffgen.ops.KnnIndex`` keeps it)."""
    (M, D) = q.shape
    xg_all, xn_all, dx_all, a_all = keys
    N = xg_all.shape[0]
    w, gamma, cg, ca, eta, safety = constants(metric, D, gemm_dtype)
    qg, qn, dq, _ = prepare(q, centre, metric, gemm_dtype)  # (a of queries: constant per row)
    A = w * (dq + gamma * qn)  # [M] float64
    B = w * qn
    cap = min(capacity, N)
    hv = torch.full((M, k), float("inf"), dtype=torch.float32, device=q.device)
    hi_i = torch.full((M, k), -1, dtype=torch.int64, device=q.device)
    cv = torch.full((M, cap), float("inf"), dtype=torch.float32, device=q.device)
    ci = torch.full((M, cap), -1, dtype=torch.int64, device=q.device)
    if gemm_dtype == torch.float64:
        hv, cv = hv.double(), cv.double()
    n_tile = max(1, min(N, max(256, (1 << 22) // max(1, D))))
    m_chunk = max(1, min(M, tile_elems // n_tile))
    for n0 in range(0, N, n_tile):
        t = slice(n0, n0 + n_tile)
        xg, dx, a = xg_all[t], dx_all[t], a_all[t]
        p = xn_all[t] + dx
        for m0 in range(0, M, m_chunk):
            r = slice(m0, m0 + m_chunk)
            lo, hi = score_fn(qg[r], xg, a, p, dx, A[r], B[r], w, cg, ca, eta, safety)
            hv[r], hi_i[r] = merge(hv[r], hi_i[r], hi.to(hv.dtype), n0, False)
            cv[r], ci[r] = merge(cv[r], ci[r], lo.to(cv.dtype), n0, False)
    tau = hv[:, k - 1 : k]  # [M, 1]
    # candidates first (in index order), then cut the columns to the largest count: the
    # float64 re-rank gathers only these
    cand = torch.where(cv <= tau, ci, N).sort(dim=1).values
    width = max(1, int((cand < N).sum(1).max())) if M else 1
    cand = cand[:, :width]
    cand = torch.where(cand < N, cand, -1)
    overflow = (cv[:, cap - 1] <= tau[:, 0]) if cap < N else torch.zeros(M, dtype=torch.bool,
                                                                           device=q.device)
    return cand, overflow
