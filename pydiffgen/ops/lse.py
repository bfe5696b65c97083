"""The online log-sum-exp state of the empirical denoiser and its exact reduction, shared
by the one-process op (``pydiffgen.ops.empirical_denoiser``) and the sharded one
(``pydiffgen.distributed``): ``denoise``.

For rows y [M, D] and training points x_i with logits l_i = −‖y − x_i‖²/(2σ²), the state
is (m [M] = max_i l_i, s [M] = Σ_i exp(l_i − m), a [M, D] = Σ_i exp(l_i − m) x_i), and
D_M = a / s. States of disjoint sets merge by rescaling each to the larger m
(flash-decoding; docs/design.md#numerics).

Exactness (docs/science.md#empirical-optimum-numerics). Target: ‖D̂ − D‖ ≤ 1e-6·‖D‖ per
row, D the float64 softmax, D̂ the float32 output; TOL = 1e-7 below leaves the rest of
the budget to the output's float32 rounding. Float32 logits cannot meet it: their error
(~u·√D·‖y − μ‖·R/σ², bound 1) moves D by ~1e-5 relative even at σ = 80, and the float32
weighted sum of N rows errs by ~u·√N relative (1.3e-6 measured on digits), so every
number a user sees comes from float64 arithmetic, and low precision only *prunes*:

4. Candidates (``candidate_pass``, any σ). One bfloat16 GEMM scores every pair,
   G' = ⟨y − μ, x_i − μ⟩ − ‖x_i − μ‖²/2 (the logit is G'/σ² plus a per-row constant),
   with a rigorous bound E ≥ |G̃' − G'| (``pair_error``, the derivation of
   csrc/cpu/knn.cpp). With L = max_i G̃'_i − E ≤ max_i G'_i, every point with
   G̃'_i + E < L − σ²·(MARGIN + log N) has a logit below the largest minus MARGIN + log N,
   so the omitted points carry a weight fraction ε ≤ N·e^−(MARGIN + log N) = e^−MARGIN
   and ‖D_C − D‖ = ε‖D_rest − D_C‖ ≤ ε·B, B = R + ‖D_C − μ‖ ≥ max_i ‖x_i − D_C‖
   (R = max_i ‖x_i − μ‖). The kept points get direct float64 logits (``sparse_partials``);
   rows are certified when e^−MARGIN·B ≤ TOL·‖D_C‖ (``omission_certified``). Rows that
   keep more than CAP points (σ comparable to the data's spread: the softmax is dense)
   take the dense float64 pass instead.
1. Logit errors of the dense float64 pass. If every logit carries an error |δ_i| ≤ Δ, the
   weights satisfy e^(−2Δ) ≤ ŵ_i/w_i ≤ e^(2Δ), and since Σ_i (ŵ_i − w_i) = 0,
       ‖D̂ − D‖ = ‖Σ_i (ŵ_i − w_i)(x_i − D)‖ ≤ (e^(2Δ) − 1)·B.
   Δ is ``exact.logit_error`` in float64 (~1e-16·√D·‖y − μ‖·R/σ²).
2. Where bound 1 fails (tiny σ on large-norm data, rows the candidate pass left dense:
   many near-ties), the state over the CANDIDATES nearest points (``knn``, direct float64
   logits) replaces the full one when every other point's logit is ≤ c < m − MARGIN (c the
   smallest candidate logit, ``uncertified``): the omitted fraction is ≤ N·e^−MARGIN.
   Rows neither certifies keep the float64 pass (its error is then ~Δ·B, far below
   float32's).
3. Rounding of the float64 weighted sum of the raw rows: about u·√N·(R + ‖μ‖), added to
   bound 1 (``dense_exact``).
"""

from __future__ import annotations

import math

import torch

from .exact import GATHER_ELEMS, centre, logit_error, radius, softmax_gather64
from .knn import KnnIndex, search
from .knn_certified import U32, U_ACC_TC

# The relative output error allotted to logit errors and omitted points (bound above).
TOL = 1e-7
# Candidates per exact row, and the logit margin that certifies them: every training point
# outside the candidates has a logit below max − MARGIN (weight < e^-40).
CANDIDATES = 64
MARGIN = 40.0
# bfloat16 unit roundoff (round to nearest), and 2^-8 for the rounding of a bf16 GEMM's
# output (as csrc/cpu/knn.cpp: a conservative factor 2)
U_BF16 = 2.0**-9
U_OUT = 2.0**-8
# The candidate pass keeps at most this many points per row (and at most N/16: beyond
# that, gathering the candidates in float64 costs more than the dense float64 pass).
CAP = 256


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


def candidate_partials(y, x, sig, C: int = CANDIDATES, keys: Keys | None = None):
    """The state (m, s, a) over the C nearest points of x (``knn``, direct float64
    logits) and c [M], the smallest candidate logit, which bounds every other point's logit
    (−inf when all of x are candidates). Float64; differentiable in y. keys: x prepared
    (``Keys``), whose kNN index a held set keeps; default: the search prepares x per call."""
    M, D = y.shape
    C = min(C, x.shape[0])
    if C == 0:
        m, s, a = empty(M, D, y.device)
        return m, s, a, m.clone()
    idx = keys.nearest(y.detach(), C) if keys is not None else search(y.detach(), x, C)[1]
    m, s, a, c = softmax_gather64(y, x, idx, sig)
    if C == x.shape[0]:
        c = torch.full_like(c, float("-inf"))
    return m, s, a, c


def uncertified(m_star, c):
    """Rows whose candidates do not certify the state: some point outside them may have a
    logit within MARGIN of the largest, m_star [M]. Bool [M]."""
    return c >= m_star - MARGIN


def sparse_partials(y, x, sig, cap: int | None = None, keys: Keys | None = None):
    """The exact float64 state (m, s, a) of each row over its certified candidates (bound 4
    above: ``candidate_pass`` over ``keys``, x prepared, by default per call, then direct
    float64 logits), dense [M] bool, the rows with
    more than ``cap`` candidates (default: min(CAP, N/16)), whose state is left empty
    (−inf, 0, 0) for a dense pass, and (μ [D] float64, R): every x_i lies within R of μ."""
    M, D = y.shape
    N = x.shape[0]
    if N == 0 or M == 0:
        return *empty(M, D, y.device), torch.zeros(M, dtype=torch.bool, device=y.device), (
            _centre64(x, D, y.device), 0.0)
    cap = cap or max(1, min(CAP, N // 16))
    rows, cols, dense, mu, R = candidate_pass(y, keys or Keys(x), sig, cap)
    state = pair_partials(y, x, sig, rows, cols) if len(rows) else empty(M, D, y.device)
    return *state, dense, (mu.double(), R)


def pair_partials(y, x, sig, rows, cols):
    """The state (m, s, a) of rows y [M, D] over the pairs (rows [P], cols [P]) of rows and
    points of x, from direct float64 differences (rows without a pair: (−inf, 0, 0)).
    Work ∝ P·D, in chunks of ≤ exact.GATHER_ELEMS elements."""
    M, D = y.shape
    m, s, a = empty(M, D, y.device)
    step = max(1, GATHER_ELEMS // D)
    logits = torch.cat([
        (y[rows[p0 : p0 + step]].double() - x[cols[p0 : p0 + step]].double()).square().sum(1)
        for p0 in range(0, len(rows), step)]) / (-2 * sig.double()[rows].square())  # [P]
    m.scatter_reduce_(0, rows, logits, "amax")
    p = torch.exp(logits - m[rows])  # [P]
    s.index_add_(0, rows, p)
    for p0 in range(0, len(rows), step):
        r = slice(p0, p0 + step)
        # index_put_ accumulates rows ≈ 5× faster than index_add_ on the CPU (torch 2.13)
        a.index_put_((rows[r],), p[r, None] * x[cols[r]].double(), accumulate=True)
    return m, s, a


class Keys:
    """The training set x [N ≥ 1, D] prepared for ``candidate_pass``: μ and the strided
    sample (``_shift``), and per tile of ``n_tile`` rows the bf16 augmented rows
    [x − μ, a_hi, a_lo] (a = ‖x − μ‖² in two bf16 parts) with A ≥ max ‖x − μ‖² of the tile;
    and for the exact rows of ``dense_exact`` the kNN index of x (``nearest``), built on
    first use. ``hold=True`` builds every tile now and keeps them and the kNN index
    (2·N·(D + 2) bytes, and the index's prepared keys once built: the training set is
    queried many times, ``pydiffgen.ops.EmpiricalIndex``); else each scan rebuilds the
    tiles one at a time (memory O(tile)) and each call its own index."""

    def __init__(self, x, hold: bool = False):
        N, D = x.shape
        self.x = x
        self.mu, self.sample = _shift(x)  # float32 [D], [s, D]
        self.n_tile = min(N, max(64, (1 << 22) // D))
        self.held = None
        self.index = None  # the held kNN index of x, once built
        if hold:
            self.held = [self.tile(n0, True) for n0 in range(0, N, self.n_tile)]

    def nearest(self, y, C: int):
        """Indices [M, C] of the C nearest points of x to each row of y [M, D] (exact,
        ``knn``; 1 ≤ C ≤ N). A held set prepares its index once, for every later call."""
        index = KnnIndex.of_rows(self.x) if self.index is None else self.index
        if self.held is not None:
            self.index = index
        return index.search_rows(y, C)[1]

    def tile(self, n0: int, rows: bool):
        """(A, xa [t, D + 2] bf16, or None unless ``rows``) of the tile starting at n0."""
        if self.held is not None:
            return self.held[n0 // self.n_tile]
        xc = self.x[n0 : n0 + self.n_tile].float()  # [t, D]
        xc = xc - self.mu if bool(self.mu.any()) else xc
        sq = torch.linalg.vector_norm(xc, dim=1).square_()  # [t]
        A = float(sq.max()) * (1 + 2 * (xc.shape[1] + 2) * U32)  # ≥ max ‖x − μ‖² of the tile
        if not rows:
            return A, None
        D = xc.shape[1]
        xa = torch.empty(len(xc), D + 2, dtype=torch.bfloat16, device=xc.device)
        xa[:, :D] = xc
        xa[:, D] = sq
        xa[:, D + 1] = sq - xa[:, D].float()
        return A, xa


def candidate_pass(y, keys: Keys, sig, cap: int):
    """Bound 4's bfloat16 pass over the prepared x [N, D] (``Keys``) for rows y [M, D],
    σ [M]: (rows, cols) int64, the kept pairs (every point a row may not omit, plus some it
    may), dense [M] bool (rows that kept more than ``cap`` points, whose pairs are dropped,
    and rows whose slack covers the spread of the scores of ≤ 256 strided points: they
    would keep about every point, so they are never scanned), μ [D] and
    R ≥ max_i ‖x_i − μ‖.
    Scores G' = ⟨y − μ, x − μ⟩ − ‖x − μ‖²/2 (larger is nearer; the logit is G'/σ² up to a
    per-row constant) come from one bf16 GEMM of augmented rows [y − μ, −½, −½] and
    [x − μ, a_hi, a_lo] (a = ‖x − μ‖² split into two bf16 parts): E [M] bounds their error."""
    M, D = y.shape
    N = keys.x.shape[0]
    dev = y.device
    mu, sample = keys.mu, keys.sample
    q = y.float() - mu  # [M, D]
    nq = torch.linalg.vector_norm(q, dim=1).double() * (1 + (D + 2) * U32)  # ≥ ‖y − μ‖
    qa = torch.empty(M, D + 2, dtype=torch.bfloat16, device=dev)
    qa[:, :D], qa[:, D:] = q, -0.5
    slack = sig.double().square() * (MARGIN + math.log(N))  # [M], in units of G'
    lower = torch.full((M,), float("-inf"), dtype=torch.float64, device=dev)  # ≤ max_i G'_i
    # the sample's scores in float32: where the slack covers their spread, the softmax is
    # dense (a row that keeps every point): the float64 pass takes it at once
    S = torch.addmm(sample.square().sum(1).mul(-0.5), q, sample.T)  # [M, s]
    dense = slack >= (S.amax(1) - S.amin(1)).double()
    none = torch.empty(0, dtype=torch.int64, device=dev)
    kept_r, kept_c, kept_hi = [none], [none], [none.double()]
    m_chunk = max(1, min(M, (1 << 22) // keys.n_tile))
    A_max = 0.0
    for n0 in range(0, N, keys.n_tile):
        active = (~dense).nonzero().squeeze(1)
        A, xa = keys.tile(n0, len(active) > 0)
        A_max = max(A_max, A)
        if len(active) == 0:
            continue
        E = pair_error(nq, A, D)  # [M]
        for c0 in range(0, len(active), m_chunk):
            r = active[c0 : c0 + m_chunk]
            G = (qa[c0 : c0 + m_chunk] if len(active) == M else qa[r]) @ xa.T  # [m, t] bf16
            i, j, hi = _keep(G, r, lower, slack, E, cap, dense, n0 == 0)
            kept_r.append(r[i])
            kept_c.append(j + n0)
            kept_hi.append(hi)
    rows, cols, hi = torch.cat(kept_r), torch.cat(kept_c), torch.cat(kept_hi)
    # the final cut: a point kept against an early, lower bound may fall below the last one
    ok = (hi >= (lower - slack)[rows]) & ~dense[rows]
    rows, cols = rows[ok], cols[ok]
    dense |= torch.bincount(rows, minlength=M) > cap
    ok = ~dense[rows]
    return rows[ok], cols[ok], dense, mu, A_max**0.5


def _keep(G, r, lower, slack, E, cap, dense, first):
    """One block G [m, t] (bf16 scores G̃' of rows r): (i, j, G̃' + E) of the pairs with
    G̃' + E ≥ lower − slack, lower [M] raised in place to the block's max G̃' − E. The
    first block sets lower from its row maxima; later blocks are cut at the threshold
    before them (a superset, without a pass for the maxima), then at the one their kept
    pairs give. Rows that keep more than ``cap`` points against their own block maximum are
    marked dense (in place) and keep none."""
    rows = torch.arange(len(r), device=G.device)
    if first:
        lower[r] = torch.maximum(lower[r], G.amax(1).double() - E[r])
    i, j = _above(G, lower[r] - slack[r] - E[r])
    over = rows[torch.bincount(i, minlength=len(r)) > cap]
    if len(over) and not first:  # those rows against their own block maximum
        lower[r[over]] = torch.maximum(lower[r[over]], G[over].amax(1).double() - E[r[over]])
        i2, j2 = _above(G[over], (lower - slack - E)[r[over]])
        drop = torch.isin(i, over)
        i, j = torch.cat([i[~drop], over[i2]]), torch.cat([j[~drop], j2])
        over = rows[torch.bincount(i, minlength=len(r)) > cap]
    hi = G[i, j].double() + E[r[i]]
    if not first and len(i):  # the kept pairs' maximum raises lower: cut again
        top = torch.full((len(r),), float("-inf"), dtype=torch.float64, device=G.device)
        top.scatter_reduce_(0, i, hi - 2 * E[r[i]], "amax")
        lower[r] = torch.maximum(lower[r], top)
        ok = hi >= (lower - slack)[r[i]]
        i, j, hi = i[ok], j[ok], hi[ok]
    if len(over):
        dense[r[over]] = True
        ok = ~torch.isin(i, over)
        i, j, hi = i[ok], j[ok], hi[ok]
    return i, j, hi


def _above(G, thr):
    """(i, j) where G [m, t] (bf16) ≥ thr [m] (float64), comparing with thr rounded down
    to bf16 (so no pair at or above thr is missed). Only rows whose maximum reaches thr
    are compared: where the softmax is sparse, most rows of most tiles keep nothing."""
    thr = (thr - thr.abs() * 2.0**-7 - 1e-30).to(torch.bfloat16)
    hit = (G.amax(1) >= thr).nonzero().squeeze(1)
    if 2 * len(hit) > len(G):
        return (G >= thr[:, None]).nonzero(as_tuple=True)
    i, j = (G[hit] >= thr[hit, None]).nonzero(as_tuple=True)
    return hit[i], j


def _shift(x):
    """The point μ subtracted before the bf16 pass, and ≤ 256 evenly strided rows of x minus
    μ: μ = ``exact.centre`` where it shrinks the rows (data far from the origin, whose bf16
    scores would lose the differences), else 0 (one pass less over x; the bound uses the
    norms either way)."""
    mu = centre(x)  # float32 [D]
    sample = x[:: max(1, x.shape[0] // 256)].float()
    spread = float(torch.linalg.vector_norm(sample - mu, dim=1).max())
    if float(mu.norm()) <= spread / 4:
        mu = torch.zeros_like(mu)
    return mu, sample - mu


def pair_error(nq, A: float, D: int):
    """E [M] ≥ |G̃' − G'| for every pair of rows of norm ≤ nq [M] (float32 y − μ) and
    points with ‖x − μ‖² ≤ A, G̃' from ``candidate_pass``'s bf16 GEMM (bound 4). float64."""
    nx = A**0.5
    rho = U_BF16 + 1.01 * U32  # ‖v* − ṽ‖ ≤ rho·‖v_p‖: float32 centring, then bf16
    gamma = (D + 4) * U_ACC_TC / (1 - (D + 4) * U_ACC_TC)
    nqt, nxt = (1 + U_BF16) * nq, (1 + U_BF16) * nx  # the bf16 rows' norms
    terms = nqt * nxt + A * (1 + 2 * U_BF16) / 2  # Σ |products| of the augmented dot
    dot = rho * nq * (nxt + rho * nx) + nqt * rho * nx  # rounding of the operands
    # ‖x − μ‖² in float32 and split into bf16 parts: γ_D + two roundings + 2^-18
    sq = ((D + 4) * 1.01 * U32 + 2.02 * U32 + 2.0**-17) * A / 2
    return (1 + 2.0**-10) * (dot + gamma * terms + U_OUT * (1 + gamma) * terms + sq)


def omission_certified(out, spread, parts: int = 1):
    """Rows of D out [M, D] (float64) from candidate states whose omitted points cannot move
    it by TOL relative: their weight fraction is ≤ parts·e^−MARGIN (``parts`` sets of
    candidates, each omitting points MARGIN + log N below its largest logit), so the error
    is ≤ parts·e^−MARGIN·spread, spread [M] ≥ max_i ‖x_i − D‖. Bool [M]."""
    return parts * math.exp(-MARGIN) * spread <= TOL * out.norm(dim=1)


def denoise(y, x, sig, dense, merge=None, agree=None, parts: int = 1, candidates=True,
            keys: Keys | None = None):
    """D_M float64 [M, D] for rows y [M, D] and σ [M] over x [N, D], certified (module doc):
    the candidate pass (bound 4) where it certifies a row, else the float64 pass
    ``dense`` (y, x, σ) -> D (bounds 1–3, ``dense_exact``). Sharded use: x is this rank's
    shard, ``merge`` (m, s, a) -> D merges every rank's states, ``agree`` (t) -> the
    elementwise max of t [M] over the ranks, ``parts`` the number of ranks, and ``dense``
    runs on every rank; defaults: one process. ``candidates=False`` skips the pass;
    ``keys``: x prepared for it and for the exact rows' kNN search (``Keys``; default:
    prepared per call, tile by tile)."""
    merge = merge or (lambda m, s, a: a / s[:, None])
    agree = agree or (lambda t: t)
    M, D = y.shape
    out = torch.zeros(M, D, dtype=torch.float64, device=y.device)
    dense_rows = torch.ones(M, dtype=torch.bool, device=y.device)
    ball = None
    if candidates:
        m, s, a, dense_rows, ball = sparse_partials(y, x, sig, keys=keys)
        mu, R = ball
        dense_rows = agree(dense_rows.double()).bool()  # a row dense on one rank: on all
        m[dense_rows], s[dense_rows], a[dense_rows] = float("-inf"), 0.0, 0.0
        out = merge(m, s, a).nan_to_num_(0.0)  # 0/0 on dense rows
        spread = agree(R + (out - mu).norm(dim=1))
        dense_rows |= ~omission_certified(out, spread, parts)
    rows = dense_rows.nonzero().squeeze(1)
    if len(rows):
        out[rows] = dense_exact(y[rows], x, sig[rows], dense, merge, agree, ball, keys)
    return out


def dense_exact(y, x, sig, dense, merge, agree, ball=None, keys: Keys | None = None):
    """D_M float64 [M, D] by the float64 pass ``dense`` (y, x, σ) -> D, with the rows whose
    logit error (bound 1) and rounding (bound 3) could move D by TOL taken from the
    CANDIDATES nearest points where those certify it (bound 2); ``merge``, ``agree`` and
    ``keys`` (whose kNN index finds the candidates) as in ``denoise``; ball (μ [D] float64,
    R) with every x_i within R of μ (default: the centre and radius of x)."""
    M, D = y.shape
    out = dense(y, x, sig).double()
    if ball is None:
        mu = _centre64(x, D, y.device)
        ball = mu, (radius(x, mu) if len(x) else 0.0)
    mu, R = ball
    u = torch.finfo(torch.float64).eps / 2
    err = agree(logit_error((y.double() - mu).norm(dim=1), R * R, D, torch.float64, sig))
    spread = agree(R + (out - mu).norm(dim=1))
    rounding = agree(torch.full_like(err, u * len(x) ** 0.5 * (R + float(mu.norm()))))
    bad = (torch.expm1(2 * err) * spread + rounding > TOL * out.norm(dim=1)).nonzero()
    bad = bad.squeeze(1)
    if len(bad):
        m, s, a, c = candidate_partials(y[bad], x, sig[bad], keys=keys)
        ok = ~agree(uncertified(agree(m), c).double()).bool()
        out[bad[ok]] = merge(m, s, a)[ok]
    return out


def _centre64(x, D: int, device):
    """``exact.centre`` in float64; zeros for an empty shard."""
    if len(x) == 0:
        return torch.zeros(D, dtype=torch.float64, device=device)
    return centre(x).double()
