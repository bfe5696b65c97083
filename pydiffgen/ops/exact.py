"""The exact float64 numerics every op shares: finiteness check, centring, candidate scores,
the softmax over gathered candidates and the logit error bound of a centred expansion.

Fast passes (bf16 / float32 GEMMs over ‖q‖² + ‖x‖² − 2⟨q, x⟩) only *rank*; the numbers
users see are recomputed here from direct differences in float64 (docs/design.md#numerics).
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError

# Rows per gathered chunk: the [rows, k, D] float64 gather stays ≤ 4 M elements (32 MB).
GATHER_ELEMS = 1 << 22


def magnitude(t: torch.Tensor) -> float:
    """The largest |entry| of t in one reduction pass: NaN or inf when t holds any (both
    propagate into the min and max). Integer tensors: the dtype's bound, without a pass."""
    if not t.is_floating_point():
        return 1.0 if t.dtype == torch.bool else float(torch.iinfo(t.dtype).max)
    if not t.numel():
        return 0.0
    lo, hi = torch.aminmax(t.detach())
    return float(torch.maximum(-lo, hi))


def check_finite(t: torch.Tensor, name: str) -> float:
    """NaN/Inf check in one reduction pass; returns the largest |entry| (``magnitude``),
    which tells the fast passes whether the data needs rescaling (``rescale_exponent``)."""
    m = magnitude(t)
    if not math.isfinite(m):
        raise InputError(f"{name} contains NaN or Inf values")
    return m


# The fast passes hold ‖x − μ‖², ⟨q, x⟩ and their error bounds in float32: with every
# |entry| < 2^b these stay ≤ 64·D·2^(2b) (4 from centring, 16 of margin for the bound's
# terms), far below float32's 2^128 while 2b ≤ 114 − log2 D. Below 2^-32, float32 squares
# underflow and the bound's absolute term η = 2^-100 swallows the scores.
FAST_LOG2_MIN = -32
FAST_LOG2_SUM = 114


def rescale_exponent(amax: float, D: int) -> int:
    """e such that data of largest |entry| amax, scaled by 2^e, is safe for the fast passes
    of D-dimensional rows: 0 when amax already is, else the e that brings amax into
    [1/2, 1) (an exact scaling; l2, ip and cosine orderings do not change under it)."""
    if amax == 0:
        return 0
    b = math.frexp(amax)[1]  # 2^(b−1) ≤ amax < 2^b
    if FAST_LOG2_MIN <= b <= (FAST_LOG2_SUM - math.ceil(math.log2(max(D, 1)))) // 2:
        return 0
    return -b


def ldexp(t: torch.Tensor, e: int) -> torch.Tensor:
    """t·2^e in float64: exact for float32 / float16 / bfloat16 / uint8 data (float64 holds
    their scaled values), and for float64 entries that stay normal. Two factors, as 2^e
    alone may overflow a float64 (|e| up to 2148)."""
    h = e // 2
    return t.double() * 2.0**h * 2.0 ** (e - h)


def centre(x: torch.Tensor) -> torch.Tensor:
    """A point near the centre of x [N, D], float32 [D]: the mean of at most ~8192 evenly
    strided rows. The expansion is shift-invariant and final scores are exact, so any point
    near the centre removes the float32 cancellation of far-from-origin data; no full
    float64 pass over x."""
    step = max(1, x.shape[0] // 8192)
    return x[::step].float().mean(0)


def radius(x: torch.Tensor, mu: torch.Tensor) -> float:
    """max_i ‖x_i − μ‖ for x [N, D] and μ [D], float64, in row chunks (no [N, D] float64
    copy of x)."""
    rows = _rows_per_chunk(1, x.shape[1])
    r2 = max((float((x[n0 : n0 + rows].double() - mu).square().sum(1).max())
              for n0 in range(0, x.shape[0], rows)), default=0.0)
    return r2**0.5


def _rows_per_chunk(k: int, D: int) -> int:
    return max(1, GATHER_ELEMS // max(1, k * D))


def score64(q: torch.Tensor, x: torch.Tensor, idx: torch.Tensor, metric: str) -> torch.Tensor:
    """Exact float64 scores of the keys idx [M, k] (valid indices into x [N, D]) for the
    queries q [M, D]: ``l2`` ‖q − x‖² from direct differences, ``cosine`` ⟨q/‖q‖, x/‖x‖⟩
    (a zero vector scores 0), ``ip`` ⟨q, x⟩. Returns float64 [M, k]."""
    out = []
    rows = _rows_per_chunk(idx.shape[1], q.shape[1])
    for r0 in range(0, q.shape[0], rows):
        cand = x[idx[r0 : r0 + rows]].double()  # [r, k, D]
        qd = q[r0 : r0 + rows].double()[:, None, :]  # [r, 1, D]
        if metric == "l2":
            out.append((qd - cand).square().sum(-1))
            continue
        if metric == "cosine":
            qd = qd / qd.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            cand = cand / cand.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        out.append((qd * cand).sum(-1))
    if not out:
        return torch.empty(0, idx.shape[1], dtype=torch.float64, device=q.device)
    return torch.cat(out)


def softmax_gather64(y: torch.Tensor, x: torch.Tensor, idx: torch.Tensor,
                     sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The softmax of logits −‖y − x_i‖²/(2σ²) over the training points idx [M, k] of
    each row, from direct float64 differences, in the online-merge form
    (m [M] largest logit, s [M] = Σ exp(l − m), a [M, D] = Σ exp(l − m) x_i) plus
    c [M], the smallest of the k logits; D = a / s. Differentiable in y and σ."""
    ms, ss, as_, cs = [], [], [], []
    rows = _rows_per_chunk(idx.shape[1], y.shape[1])
    for r0 in range(0, y.shape[0], rows):
        r = slice(r0, r0 + rows)
        cand = x[idx[r]].double()  # [r, k, D]
        d2 = (y[r].double()[:, None, :] - cand).square().sum(-1)  # [r, k]
        logits = -d2 / (2 * sigma[r].double()[:, None] ** 2)
        m = logits.max(1).values
        p = torch.exp(logits - m[:, None])  # [r, k]
        ms.append(m)
        ss.append(p.sum(1))
        as_.append((p[:, :, None] * cand).sum(1))
        cs.append(logits.min(1).values)
    if not ms:
        f64 = dict(dtype=torch.float64, device=y.device)
        return (torch.empty(0, **f64), torch.empty(0, **f64),
                torch.empty(0, y.shape[1], **f64), torch.empty(0, **f64))
    return torch.cat(ms), torch.cat(ss), torch.cat(as_), torch.cat(cs)


def logit_error(yc_norm: torch.Tensor, R2: float, D: int, dtype: torch.dtype,
                sigma: torch.Tensor) -> torch.Tensor:
    """Bound on the error of the logits (⟨y, x⟩ − ‖x‖²/2)/σ² computed in ``dtype`` from
    centred rows: yc_norm [M] = ‖y − μ‖, R2 = max_i ‖x_i − μ‖²; the same estimate as the
    C++ kernel's (√D·u per product of norms: rounding errors of a length-D dot product
    grow like √D in practice). Float64 [M]."""
    u = torch.finfo(dtype).eps / 2
    return 2 * u * math.sqrt(D) * (yc_norm.double() * math.sqrt(R2) + R2 / 2) / (
        sigma.double().square())
