"""Empirical optimal denoiser D_M(y; σ) = Σ_i softmax_i(−‖y − y_i‖²/(2σ²)) y_i.

The exact posterior mean E[x | y] when x is drawn uniformly from the training set and
y = x + σ·n (SCIENCE.md §5). Its Jacobian is Cov_w[y_i]/σ² (the softmax-weighted
covariance of the training points), which gives the VJP used by autograd.

Numerics (DESIGN.md): training tiles are streamed with a flash-decoding-style online
merge of (max, sum, weighted sum); no [M, N] matrix is ever held. The training mean is
subtracted before the ‖y‖² + ‖x‖² − 2⟨y, x⟩ expansion. A logit's error is the distance
error / 2σ², so every backend bounds it: where the float32 bound exceeds ``LOGIT_TOL``
(small σ), the rows are recomputed exactly (see ``_exact_rows``), so σ = 0.002 on
[-1, 1] data returns the nearest training image, never NaN.

Backends in priority order:
  CUDA: triton (pydiffgen.kernels.empirical, custom op pydiffgen::empirical_denoiser_triton)
        → reference;
  CPU:  cpp (pydiffgen._C, ATen GEMMs per tile + a fused OpenMP exp/merge pass, op
        pydiffgen::empirical_denoiser) → reference (pydiffgen::empirical_denoiser_ref,
        float64 throughout).
Each backend is a custom op with a fake kernel and autograd (VJP by recomputation,
``pydiffgen::empirical_denoiser_vjp``, float64).
"""

from __future__ import annotations

import torch

from .. import _native
from .._checks import as_sigma, check_tensor
from ..errors import InputError
from ..kernels import TRITON_WHY_NOT, cuda_why_not
from . import _dispatch, reference
from .knn import _check_finite


def empirical_denoiser(y, train, sigma, backend: str | None = None, *, topk: int | None = None):
    """Empirical optimal denoiser: the softmax-weighted mean of the training points.

    y [M, *F] noisy inputs, train [N, *F] training set, sigma a float or [M] tensor (> 0).
    ``topk=k`` restricts the softmax to the k nearest training points of each input
    (found with ``pydiffgen.ops.knn``; k = N gives the full result). ``backend`` forces
    one implementation (see ``pydiffgen.available_backends()``). Differentiable in y.
    Returns [M, *F] in the promoted dtype of y and train.
    """
    y, train, sig = _validate(y, train, sigma, topk)
    M = y.shape[0]
    shape = y.shape
    if M == 0:
        return y.clone()
    y2, x2 = y.reshape(M, -1), train.reshape(train.shape[0], -1)
    if topk is not None:
        return _topk(y2, x2, sig, topk, backend).reshape(shape)
    if _transformed(y, sig):
        # under torch.func (vmap, jacrev, jacfwd) values cannot steer control flow, which
        # the fast backends' exact-row fallback needs: the float64 reference has none
        return _EmpiricalFn.apply(y2, x2.detach(), sig, _ED_REF).reshape(shape)
    impl = _dispatch.op("empirical_denoiser").select(y.device.type, backend)
    return impl.fn(y2, x2, sig).reshape(shape)


def _transformed(*tensors) -> bool:
    """True inside a torch.func transform (vmap / grad / jvp wrappers)."""
    if torch.compiler.is_compiling():  # dynamo cannot trace the check; it sees plain tensors
        return False
    return any(isinstance(t, torch.Tensor) and torch._C._functorch.is_functorch_wrapped_tensor(t)
               for t in tensors)


def _validate(y, train, sigma, topk):
    check_tensor(y, "y", min_ndim=2, nonempty=False, finite=False)
    check_tensor(train, "train", min_ndim=2, finite=False)
    if not _transformed(y):  # a value check cannot run under vmap
        _check_finite(y, "y")
    _check_finite(train, "train")  # no [N, D] temporary: the op's memory stays O(tiles)
    if y.shape[1:] != train.shape[1:]:
        raise InputError(
            f"y and train must share feature shape, got y {tuple(y.shape)} and train "
            f"{tuple(train.shape)}"
        )
    if y.device != train.device:
        raise InputError(f"y and train must be on one device, got {y.device} and {train.device}")
    if y.shape[1:].numel() == 0:
        raise InputError(f"y and train have no features (shape {tuple(y.shape)})")
    dtype = torch.promote_types(y.dtype, train.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32  # half / bfloat16 inputs are computed in float32
    if _transformed(sigma):  # batched σ under vmap: shape checks only
        sig = sigma.to(torch.float64).expand(y.shape[0]) if sigma.ndim == 0 else sigma.double()
    else:
        sig = as_sigma(sigma, y.shape[0], device=y.device, dtype=torch.float64)
    if topk is not None:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise InputError(f"topk must be None or a positive integer, got {topk!r}")
        if topk > train.shape[0]:
            raise InputError(f"topk={topk} exceeds the number of training points N={len(train)}")
    return y.to(dtype), train.to(dtype), sig


def _topk(y, x, sig, k, backend):
    """Softmax over the k nearest training points only (exact float64 logits); autograd
    flows through the gathered torch computation."""
    from .knn import knn

    _, idx = knn(y.detach(), x, k)  # [M, k]
    rows = max(1, (1 << 22) // max(1, k * y.shape[1]))
    out = []
    for m0 in range(0, y.shape[0], rows):
        cand = x[idx[m0 : m0 + rows]].double()  # [m, k, D]
        d2 = (y[m0 : m0 + rows].double()[:, None, :] - cand).square().sum(-1)  # [m, k]
        w = torch.softmax(-d2 / (2 * sig[m0 : m0 + rows, None] ** 2), dim=1)
        out.append((w[:, :, None] * cand).sum(1))
    return torch.cat(out).to(y.dtype)


# --- reference backend: float64 streamed online merge -------------------------------------


@torch.library.custom_op("pydiffgen::empirical_denoiser_ref", mutates_args=())
def _ed_ref(y: torch.Tensor, train: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return reference.empirical_denoiser(y, train, sigma).to(y.dtype)


@_ed_ref.register_fake
def _(y, train, sigma):
    torch._check(y.dim() == 2 and train.dim() == 2 and y.shape[1] == train.shape[1])
    return y.new_empty(y.shape)


@torch.library.custom_op("pydiffgen::empirical_denoiser_vjp", mutates_args=())
def _ed_vjp(
    y: torch.Tensor, train: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor,
    grad: torch.Tensor,
) -> torch.Tensor:
    return reference.empirical_denoiser_vjp(y, train, sigma, denoised, grad).to(y.dtype)


@_ed_vjp.register_fake
def _(y, train, sigma, denoised, grad):
    return y.new_empty(y.shape)


def _setup_context(ctx, inputs, output):
    y, train, sigma = inputs
    ctx.save_for_backward(y, train, sigma, output)


def _backward(ctx, grad):
    y, train, sigma, out = ctx.saved_tensors
    grad_y = None
    if ctx.needs_input_grad[0]:
        # ∂D/∂y = Cov_w[y_i]/σ² is symmetric, so the VJP is Cov_w·g/σ²
        grad_y = torch.ops.pydiffgen.empirical_denoiser_vjp(
            y, train, sigma, out, grad.contiguous()
        )
    return grad_y, None, None


_ed_ref.register_autograd(_backward, setup_context=_setup_context)


def _flatten_vmap(fn, n_out_rows_from):
    """vmap rule for an op over rows: batch dims of any input are folded into the rows."""

    def rule(info, in_dims, *args):
        B = info.batch_size
        flat = []
        for a, d in zip(args, in_dims, strict=True):
            a = a.movedim(d, 0) if d is not None else a.expand(B, *a.shape)
            flat.append(a)
        y = flat[n_out_rows_from]
        rows = y.shape[1]
        train = flat[1]
        if in_dims[1] is not None:  # a batched training set: loop (rare)
            outs = [fn(*(f[b] for f in flat)) for b in range(B)]
            return torch.stack(outs), 0
        args2 = [f.reshape(B * rows, *f.shape[2:]) if i != 1 else train[0]
                 for i, f in enumerate(flat)]
        out = fn(*args2)
        return out.reshape(B, rows, *out.shape[1:]), 0

    return rule


torch.library.register_vmap(
    "pydiffgen::empirical_denoiser_ref",
    _flatten_vmap(lambda y, x, s: torch.ops.pydiffgen.empirical_denoiser_ref(y, x, s), 0),
)
torch.library.register_vmap(
    "pydiffgen::empirical_denoiser_vjp",
    _flatten_vmap(
        lambda y, x, s, d, g: torch.ops.pydiffgen.empirical_denoiser_vjp(y, x, s, d, g), 0
    ),
)


class _EmpiricalFn(torch.autograd.Function):
    """Autograd for the public op that also works under torch.func transforms (jacrev,
    jacfwd, vmap): the forward calls a backend's custom op, the backward the VJP op. The
    Jacobian Cov_w/σ² is symmetric, so the JVP is the same product as the VJP."""

    generate_vmap_rule = True

    @staticmethod
    def forward(y, train, sigma, fwd):
        return fwd(y, train, sigma)

    @staticmethod
    def setup_context(ctx, inputs, output):
        y, train, sigma, _ = inputs
        ctx.save_for_backward(y, train, sigma, output)
        ctx.save_for_forward(y, train, sigma, output)

    @staticmethod
    def jvp(ctx, y_t, _train_t, _sigma_t, _fwd_t):
        y, train, sigma, out = ctx.saved_tensors
        return torch.ops.pydiffgen.empirical_denoiser_vjp(
            y, train.detach(), sigma, out, y_t.contiguous()
        )

    @staticmethod
    def backward(ctx, grad):
        y, train, sigma, out = ctx.saved_tensors
        grad_y = None
        if ctx.needs_input_grad[0]:
            grad_y = torch.ops.pydiffgen.empirical_denoiser_vjp(
                y, train.detach(), sigma, out, grad.contiguous()
            )
        return grad_y, None, None, None


def _apply(fwd, y, x, sig):
    if torch.is_grad_enabled() and y.requires_grad:
        return _EmpiricalFn.apply(y, x.detach(), sig, fwd)
    return fwd(y, x, sig)


_ED_REF = torch.ops.pydiffgen.empirical_denoiser_ref


def _reference(y, x, sig):
    return _apply(_ED_REF, y, x, sig)


# --- exact rows: the fast backends' small-σ path ------------------------------------------

# A row whose estimated logit error exceeds LOGIT_TOL is recomputed exactly: the output
# error of D is about (logit error) × (spread of the weighted points).
LOGIT_TOL = 1e-2
# Candidates per row for the exact path and the logit margin that certifies them: every
# training point outside the C nearest has a logit below max − MARGIN (weight < e^-40).
_CANDIDATES = 64
_MARGIN = 40.0


def _gather_softmax(y, x, sig, idx, rows=None):
    """Exact float64 softmax over the training points idx [M, k] of each row: direct
    differences ‖y − x_i‖², no expansion. Returns (D float64 [M, D], d2 float64 [M, k])."""
    k, D = idx.shape[1], y.shape[1]
    rows = rows or max(1, (1 << 22) // max(1, k * D))
    outs, dists = [], []
    for m0 in range(0, y.shape[0], rows):
        cand = x[idx[m0 : m0 + rows]].double()  # [m, k, D]
        d2 = (y[m0 : m0 + rows].double()[:, None, :] - cand).square().sum(-1)  # [m, k]
        w = torch.softmax(-d2 / (2 * sig[m0 : m0 + rows, None].double() ** 2), dim=1)
        outs.append((w[:, :, None] * cand).sum(1))
        dists.append(d2)
    return torch.cat(outs), torch.cat(dists)


def _exact_rows(y, x, sig):
    """D_M for rows whose fast logits are too coarse (small σ), float64-exact.

    The C = 64 nearest training points (``knn``, exact float64 re-rank) get direct float64
    logits; if the C-th is more than MARGIN below the best (d2_C − d2_1 > 2σ²·MARGIN) the
    softmax over them is D_M to within e^-40·N relative. Rows where it is not (many near
    ties at that σ) are recomputed by the float64 streamed reference.
    """
    from .knn import knn

    N = x.shape[0]
    C = min(N, _CANDIDATES)
    _, idx = knn(y, x, C)
    out, d2 = _gather_softmax(y, x, sig, idx)
    if C < N:
        gap = d2.max(1).values - d2.min(1).values
        bad = gap <= 2 * sig.double() ** 2 * _MARGIN
        if bool(bad.any()):
            out[bad] = reference.empirical_denoiser(y[bad], x, sig[bad])
    return out


def _corrected(fast_op):
    """A fast backend's forward: fast_op(y, x, σ) -> (out, err); rows with err > LOGIT_TOL
    are replaced by ``_exact_rows``."""

    def forward(y, x, sig):
        out, err = fast_op(y, x, sig)
        bad = err > LOGIT_TOL
        if bool(bad.any()):
            out = out.clone()
            out[bad] = _exact_rows(y[bad], x, sig[bad]).to(out.dtype)
        return out

    return forward


def _register_fast_autograd(name):
    """Fake kernel, autograd (VJP op, output `err` not differentiable) and vmap for a fast
    backend's custom op ``name`` with schema (y, train, sigma) -> (out, err)."""

    def fake(y, train, sigma):
        torch._check(y.dim() == 2 and train.dim() == 2 and y.shape[1] == train.shape[1])
        return y.new_empty(y.shape), y.new_empty(y.shape[0], dtype=torch.float64)

    def setup_context(ctx, inputs, output):
        y, train, sigma = inputs
        ctx.save_for_backward(y, train, sigma, output[0])

    def backward(ctx, grad, _grad_err):
        return _backward(ctx, grad)

    torch.library.register_fake(name, fake)
    torch.library.register_autograd(name, backward, setup_context=setup_context)


# --- cpp backend ----------------------------------------------------------------------------

_NATIVE_DTYPES = (torch.float32, torch.float64)


def _cpp_why_not():
    if not _native.has_cpu_ops():
        return _native.WHY_NOT
    if not hasattr(torch.ops.pydiffgen, "empirical_denoiser"):
        return "pydiffgen._C predates the empirical_denoiser kernel; rebuild the extension"
    return None


if _cpp_why_not() is None:
    _register_fast_autograd("pydiffgen::empirical_denoiser")


def _cpp_forward(y, x, sig):
    return _corrected(torch.ops.pydiffgen.empirical_denoiser)(y, x, sig)


def _cpp(y, x, sig):
    return _apply(_cpp_forward, y, x, sig)


# --- triton backend -------------------------------------------------------------------------


if TRITON_WHY_NOT is None:
    # The Triton launcher is the op's kernel for every device (on the CPU it runs only under
    # TRITON_INTERPRET=1, which the tests use); torch.library.triton_op would fail to
    # register on machines without a GPU.
    @torch.library.custom_op("pydiffgen::empirical_denoiser_triton", mutates_args=())
    def _ed_triton(
        y: torch.Tensor, train: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from ..kernels.empirical import empirical_denoiser as launch

        return launch(y, train, sigma)

    _register_fast_autograd("pydiffgen::empirical_denoiser_triton")


def _triton_forward(y, x, sig):
    return _corrected(torch.ops.pydiffgen.empirical_denoiser_triton)(y, x, sig)


def _triton(y, x, sig):
    return _apply(_triton_forward, y, x, sig)


_op = _dispatch.op("empirical_denoiser")
_op.register("triton", ("cuda",), _triton, cuda_why_not)
_op.register("cpp", ("cpu",), _cpp, _cpp_why_not)
_op.register("reference", ("cpu", "cuda"), _reference)


# --- partials: one shard's share of the online log-sum-exp (pydiffgen.distributed) ---------


def _partials(y, x, sig, dtype=None):
    """The online merge state of D_M over the training points x [N, D] for rows y [M, D]:
    (m, s, a) with m [M] the largest logit −‖y − x_i‖²/(2σ²), s = Σ_i exp(l_i − m) and
    a [M, D] = Σ_i exp(l_i − m) x_i, plus err [M], each row's estimated logit error (the
    C++ kernel's bound). All float64 except the GEMMs, which run in ``dtype`` (default:
    x's). D_M = a / s; partials of disjoint sets merge by rescaling to the larger m.

    Logits are ranked after subtracting a centre μ of x (the expansion's cancellation) and
    reported without it (m = max_i S_i/σ² − ‖y − μ‖²/(2σ²)), so partials of different
    sets, centred differently, are comparable. Empty x gives (−inf, 0, 0, 0).
    """
    from .knn import _centre

    M, D = y.shape
    dtype = dtype or x.dtype
    f64 = dict(dtype=torch.float64, device=y.device)
    m = torch.full((M,), float("-inf"), **f64)
    s = torch.zeros(M, **f64)
    a = torch.zeros(M, D, **f64)
    if x.shape[0] == 0 or M == 0:
        return m, s, a, torch.zeros(M, **f64)
    mu = _centre(x).to(dtype)  # [D]
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
    m = m - 0.5 * yn2 * iv
    u = torch.finfo(dtype).eps / 2
    R = R2**0.5
    err = 2 * u * D**0.5 * (yn2.sqrt() * R + R2 / 2) * iv
    return m, s, a, err


def _candidate_partials(y, x, sig, C: int = _CANDIDATES):
    """``_exact_rows``' partials: (m, s, a) over the C nearest points of x (``knn``, direct
    float64 logits) and c [M], the smallest candidate logit, which bounds every other
    point's logit (−inf when all of x are candidates). Float64."""
    from .knn import knn

    M, D = y.shape
    C = min(C, x.shape[0])
    if C == 0:
        f64 = dict(dtype=torch.float64, device=y.device)
        return (torch.full((M,), float("-inf"), **f64), torch.zeros(M, **f64),
                torch.zeros(M, D, **f64), torch.full((M,), float("-inf"), **f64))
    _, idx = knn(y, x, C)  # [M, C]
    ms, ss, as_, cs = [], [], [], []
    step = max(1, (1 << 22) // (C * D))  # the [m, C, D] gather stays ≤ 32 MB
    for m0 in range(0, M, step):
        rows = slice(m0, m0 + step)
        cand = x[idx[rows]].double()  # [m, C, D]
        d2 = (y[rows].double()[:, None, :] - cand).square().sum(-1)  # [m, C]
        logits = -d2 / (2 * sig[rows].double()[:, None] ** 2)
        m = logits.max(1).values
        p = torch.exp(logits - m[:, None])  # [m, C]
        ms.append(m)
        ss.append(p.sum(1))
        as_.append((p[:, :, None] * cand).sum(1))
        cs.append(logits.min(1).values)
    c = torch.cat(cs)
    if C == x.shape[0]:
        c = torch.full_like(c, float("-inf"))
    return torch.cat(ms), torch.cat(ss), torch.cat(as_), c
