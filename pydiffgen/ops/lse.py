"""The online log-sum-exp state of the empirical denoiser, shared by the one-process op
(``pydiffgen.ops.empirical_denoiser``) and the sharded one (``pydiffgen.distributed``).

For rows y [M, D] and training points x_i with logits l_i = −‖y − x_i‖²/(2σ²), the state
is (m [M] = max_i l_i, s [M] = Σ_i exp(l_i − m), a [M, D] = Σ_i exp(l_i − m) x_i), and
D_M = a / s. States of disjoint sets merge by rescaling each to the larger m
(flash-decoding; docs/design.md#numerics).

Exactness (docs/science.md#empirical-optimum-numerics). Target: ‖D̂ − D‖ ≤ 1e-6·‖D‖ per
row, D the float64 softmax, D̂ the float32 output.

1. Logit errors. If every logit carries an error |δ_i| ≤ Δ, the computed weights are
   ŵ_i = w_i·e^(δ_i)/Σ_j w_j e^(δ_j), so e^(−2Δ) ≤ ŵ_i/w_i ≤ e^(2Δ), and since
   Σ_i (ŵ_i − w_i) = 0,
       ‖D̂ − D‖ = ‖Σ_i (ŵ_i − w_i)(x_i − D)‖ ≤ (e^(2Δ) − 1)·Σ_i w_i‖x_i − D‖
                ≤ (e^(2Δ) − 1)·B,   B = R + ‖D − μ‖ ≥ max_i ‖x_i − D‖,
   R = max_i ‖x_i − μ‖ for any point μ. A fast (float32) row is kept only when
   (e^(2Δ) − 1)·B ≤ TOL·‖D̂‖ (``certified``); Δ is the backend's logit-error estimate
   (``exact.logit_error``). The worst case ignores the averaging of independent
   rounding errors, so float32 rows pass only at large σ (σ ≳ 30 on [-1, 1] digits);
   the rest are recomputed in float64 (Δ ~ 1e-16·R²/σ²), which the fast backends do at
   about the float32 cost on the CPU.
2. Omitted points. Where the float32 logits are hopeless (Δ > LOGIT_TOL, small σ), the
   state over the CANDIDATES nearest points (``knn``, direct float64 logits) replaces
   the full one. Every other point has a logit ≤ c (the smallest candidate logit), so
   the omitted weight fraction is ε ≤ (N − C)·e^(c − m) (s ≥ 1), and
       ‖D_C − D‖ = ε‖D_rest − D_C‖ ≤ ε·B.
   Rows are certified when c < m − MARGIN: ε·B ≤ N·e^−40·B ≤ TOL·‖D‖ whenever
   N·B/‖D‖ ≤ 2·10^10; ``uncertified`` names the other rows (many near-ties), which are
   recomputed by a float64 pass.
3. Rounding of the weighted sum Σ p_i x_i of the raw rows (kept raw so that a lone
   dominant point returns x_i exactly): about u·√N·max_i‖x_i‖ (the probabilistic √N
   growth of a length-N sum, as ``exact.logit_error``), with max_i‖x_i‖ ≤ R + ‖μ‖; added
   to bound 1 in ``certified``. In float32 it exceeds TOL·‖D‖ beyond a few hundred rows,
   so the fast backends keep float32 rows only for small training sets; float32 rows
   measured up to 1.3e-6 at σ = 80 on digits without it.
TOL = 1e-7 leaves the rest of the 1e-6 budget to the rounding of the float32 output.
"""

from __future__ import annotations

import torch

from .exact import centre, logit_error, radius, softmax_gather64
from .knn import search

# The relative output error allotted to logit errors and omitted points (bound above).
TOL = 1e-7
# Above this logit error the float32 weights are meaningless (small σ): such rows take the
# candidates' exact softmax rather than a dense float64 pass.
LOGIT_TOL = 1e-2
# Candidates per exact row, and the logit margin that certifies them: every training point
# outside the candidates has a logit below max − MARGIN (weight < e^-40).
CANDIDATES = 64
MARGIN = 40.0


def empty(M: int, D: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The state of an empty set: (−inf, 0, 0), float64."""
    f64 = dict(dtype=torch.float64, device=device)
    return torch.full((M,), float("-inf"), **f64), torch.zeros(M, **f64), torch.zeros(M, D, **f64)


def partials(y, x, sig, dtype=None):
    """The state (m, s, a) over x [N, D] for rows y [M, D] and σ [M], plus err [M], each
    row's estimated logit error. All float64 except the GEMMs, which run in ``dtype``
    (default: x's). Logits are ranked after subtracting a centre μ of x (the expansion's
    cancellation) and reported without it (m = max_i S_i/σ² − ‖y − μ‖²/(2σ²)), so states
    of different sets, centred differently, merge. Empty x gives (−inf, 0, 0, 0)."""
    M, D = y.shape
    dtype = dtype or x.dtype
    m, s, a = empty(M, D, y.device)
    if x.shape[0] == 0 or M == 0:
        return m, s, a, torch.zeros(M, dtype=torch.float64, device=y.device)
    mu = centre(x).to(dtype)  # [D]
    yc = y.to(dtype) - mu  # [M, D]
    iv = 1.0 / sig.double().square()  # [M]
    # tiles: ~1 M training elements and ≤ 1 M logits on the CPU (cache-sized, as the
    # reference), 16× both on a GPU, whose GEMMs want more work per call
    budget = 1 << (24 if y.is_cuda else 20)
    n_tile = min(x.shape[0], max(64, budget // D))
    m_chunk = min(M, max(1, budget // n_tile))
    R2 = 0.0
    for n0 in range(0, x.shape[0], n_tile):
        xt = x[n0 : n0 + n_tile].to(dtype)  # [t, D]
        xc = xt - mu
        sq = xc.square().sum(1)  # [t]
        R2 = max(R2, float(sq.max()))
        for m0 in range(0, M, m_chunk):
            rows = slice(m0, m0 + m_chunk)
            # S/σ² = −‖y − x‖²/(2σ²) + ‖y − μ‖²/(2σ²)   [m, t]
            logits = torch.addmm(sq.mul(-0.5), yc[rows], xc.T) * iv[rows, None].to(dtype)
            new_max = torch.maximum(m[rows], logits.amax(1).double())
            scale = torch.exp(m[rows] - new_max)  # 0 on the first tile
            p = torch.exp(logits - new_max[:, None].to(dtype))  # [m, t]
            s[rows] = s[rows] * scale + p.sum(1, dtype=torch.float64)
            # the raw tile, so a lone dominant point returns x_i exactly
            a[rows] = a[rows] * scale[:, None] + (p @ xt).double()
            m[rows] = new_max
    yn2 = yc.double().square().sum(1)  # [M]
    return m - 0.5 * yn2 * iv, s, a, logit_error(yn2.sqrt(), R2, D, dtype, sig)


def candidate_partials(y, x, sig, C: int = CANDIDATES):
    """The state (m, s, a) over the C nearest points of x (``knn``, direct float64
    logits) and c [M], the smallest candidate logit, which bounds every other point's logit
    (−inf when all of x are candidates). Float64; differentiable in y."""
    M, D = y.shape
    C = min(C, x.shape[0])
    if C == 0:
        m, s, a = empty(M, D, y.device)
        return m, s, a, m.clone()
    _, idx = search(y.detach(), x, C)  # [M, C]
    m, s, a, c = softmax_gather64(y, x, idx, sig)
    if C == x.shape[0]:
        c = torch.full_like(c, float("-inf"))
    return m, s, a, c


def certified(err, out, x, dtype=torch.float32):
    """Rows of a result out [M, D] computed in ``dtype`` (logit error bound err [M]) over
    x [N, D] whose output error, (e^(2·err) − 1)·B with B = R + ‖out − μ‖ ≥ max_i ‖x_i − D‖
    (bound 1 above) plus u·√N·(R + ‖μ‖) for the rounding of the weighted sum of the raw
    rows (bound 3), is at most TOL·‖out‖. Bool [M]."""
    mu = centre(x).double()  # [D]
    R = radius(x, mu)
    dev = (out.double() - mu).norm(dim=1)  # [M]
    u = torch.finfo(dtype).eps / 2
    bound = torch.expm1(2 * err.double()) * (R + dev) + u * x.shape[0] ** 0.5 * (
        R + float(mu.norm()))
    return bound <= TOL * out.double().norm(dim=1)


def fast_error(y, x, sig, dtype=torch.float32):
    """The logit-error estimate of logits computed in ``dtype`` (``exact.logit_error``,
    centred on ``exact.centre``) for rows y [M, D] over x [N, D], before any pass. [M]."""
    mu = centre(x).double()  # [D]
    R = radius(x, mu)
    return logit_error((y.double() - mu).norm(dim=1), R * R, x.shape[1], dtype, sig)


def uncertified(m_star, c):
    """Rows whose candidates do not certify the state: some point outside them may have a
    logit within MARGIN of the largest, m_star [M]. Bool [M]."""
    return c >= m_star - MARGIN
