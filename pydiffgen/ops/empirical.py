"""Empirical optimal denoiser D_M(y; σ) = Σ_i softmax_i(−‖y − y_i‖²/(2σ²)) y_i.

The exact posterior mean E[x | y] when x is drawn uniformly from the training set and
y = x + σ·n (docs/science.md#empirical-optimum). Its Jacobian is Cov_w[y_i]/σ² (the softmax-weighted
covariance of the training points), which gives the VJP used by autograd.

Numerics (docs/science.md#empirical-optimum-numerics; the one reduction is ``lse.denoise``,
shared with ``distributed.empirical_denoiser``): no [M, N] matrix is ever held. Low
precision only prunes: a bf16 GEMM with a rigorous per-pair error bound keeps, per row,
every training point whose logit may lie within MARGIN + log N of the largest, and those
get float64 logits from direct differences and an exact softmax; rows with too many
candidates (σ comparable to the data's spread: a dense softmax) take a float64 streamed
pass. Every row is certified within ``lse.TOL`` relative of the float64 softmax (bounds
in ``ops.lse``): every backend is within 1e-6 relative at every σ, and σ = 0.002 on
[-1, 1] data returns the nearest training image, never NaN.

Backends in priority order (each the candidate pass, then its own float64 dense pass):
  CUDA: triton (pydiffgen.kernels.empirical in float64, custom op
        pydiffgen::empirical_denoiser_triton) → reference;
  CPU:  cpp (pydiffgen._C in float64, ATen GEMMs per tile + a fused OpenMP exp/merge
        pass, op pydiffgen::empirical_denoiser) → reference
        (pydiffgen::empirical_denoiser_ref, float64 throughout, no candidate pass).
``EmpiricalIndex`` prepares a training set once (its check, centre and bf16 rows) for the
many calls of a σ sweep or a sampler: the same backends, without the per-call preparation.
Each backend is a custom op registered once (``ops._register``) with a fake kernel and
autograd (VJP by recomputation, ``pydiffgen::empirical_denoiser_vjp``, float64; the
Jacobian Cov_w/σ² is symmetric, so the JVP is the same product); the reference and the
VJP also carry vmap rules, so the reference runs under torch.func (vmap, jacrev, jacfwd).
"""

from __future__ import annotations

import torch

from .. import _native
from .._checks import as_sigma, check_tensor
from ..errors import InputError
from ..kernels import TRITON_WHY_NOT, cuda_why_not
from . import dispatch, lse, reference
from ._register import register, transformed
from .exact import centre, check_finite, logit_error, softmax_gather64
from .knn import search


def empirical_denoiser(y, train, sigma, backend: str | None = None, *, topk: int | None = None):
    """Empirical optimal denoiser: the softmax-weighted mean of the training points.

    y [M, *F] noisy inputs, train [N, *F] training set, sigma a float or [M] tensor (> 0).
    ``topk=k`` restricts the softmax to the k nearest training points of each input
    (found with ``pydiffgen.ops.knn``; k = N gives the full result). ``backend`` forces
    one implementation (see ``pydiffgen.available_backends()``). Differentiable in y.
    Returns [M, *F] in the promoted dtype of y and train.
    """
    y, train, sig = validate(y, train, sigma, topk)
    M = y.shape[0]
    shape = y.shape
    if M == 0:
        return y.clone()
    y2, x2 = y.reshape(M, -1), train.reshape(train.shape[0], -1)
    if topk is not None:
        return _topk(y2, x2, sig, topk).reshape(shape)
    if transformed(y, sig):
        # under torch.func (vmap, jacrev, jacfwd) values cannot steer control flow, which
        # the fast backends' exact-row fallback needs: the float64 reference has none
        return _reference(y2, x2.detach(), sig).reshape(shape)
    impl = dispatch.op("empirical_denoiser").select(y.device.type, backend)
    return impl.fn(y2, x2, sig).reshape(shape)


class EmpiricalIndex:
    """A training set prepared once for many ``empirical_denoiser`` calls (σ sweeps,
    sampling the empirical optimum, ``noise_level_gap``), as ``KnnIndex`` is for ``knn``.

    train [N, *F]: checked once (finite, float32 / float64 compute dtype), its centre, a
    strided sample and the bf16 rows of the candidate pass (``lse.Keys``, 2·N·(D + 2)
    bytes beside the training set, which is kept by reference: do not modify it in place
    while the index is in use) are prepared now, and the kNN index of its exact rows on
    their first use. ``index(y, sigma)`` returns what
    ``empirical_denoiser(y, train, sigma, backend)`` returns (the same certified result,
    differentiable in y); the reference backend has no candidate pass and prepares nothing.
    N may be 0 only for a rank's shard of ``distributed.empirical_denoiser``, which
    takes an index of each rank's shard; calling an empty index raises InputError.
    """

    def __init__(self, train, backend: str | None = None):
        check_tensor(train, "train", min_ndim=2, finite=False, nonempty=False)
        check_finite(train, "train")
        self.feature_shape = tuple(train.shape[1:])
        dtype = train.dtype if train.dtype in (torch.float32, torch.float64) else torch.float32
        self.rows = train.reshape(len(train), train.shape[1:].numel()).to(dtype)
        self.impl = dispatch.op("empirical_denoiser").select(train.device.type, backend)
        candidates = self.impl.name != "reference" and len(train) > 0
        self.keys = lse.Keys(self.rows, hold=True) if candidates else None

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __call__(self, y, sigma):
        """D_M(y; σ) [M, *F] for y [M, *F] on the training set's device, sigma a float or
        [M] tensor (> 0); in the promoted dtype of y and the training set."""
        if len(self) == 0:
            raise InputError("this EmpiricalIndex holds no training points")
        y, x, sig = self.inputs(y, sigma)
        if y.shape[0] == 0:
            return y.clone()
        if transformed(y, sig):
            return _reference(y.reshape(len(y), -1), x.detach(), sig).reshape(y.shape)
        return self.impl.fn(y.reshape(len(y), -1), x, sig, self.keys).reshape(y.shape)

    def inputs(self, y, sigma):
        """(y [M, *F], the set's rows x [N, D], σ float64 [M]): y and σ checked against the
        set, y and x in their compute dtype (as ``validate``)."""
        # against an empty view of the set: its values were checked once
        y, _, sig = validate(y, self.rows[:0].reshape(0, *self.feature_shape), sigma,
                             empty_train=True)
        return y, self.rows.to(y.dtype), sig  # the keys hold float32: valid for either


def validate(y, train, sigma, topk=None, *, train_name: str = "train", empty_train=False):
    """Checked (y, train, σ float64 [M]) in the compute dtype (float32 or float64).
    ``empty_train``: a shard of a training set may hold no rows."""
    check_tensor(y, "y", min_ndim=2, nonempty=False, finite=False)
    check_tensor(train, train_name, min_ndim=2, finite=False, nonempty=not empty_train)
    if not transformed(y):  # a value check cannot run under vmap
        check_finite(y, "y")
    check_finite(train, train_name)  # no [N, D] temporary: the op's memory stays O(tiles)
    if y.shape[1:] != train.shape[1:]:
        raise InputError(
            f"y and {train_name} must share feature shape, got y {tuple(y.shape)} and "
            f"{train_name} {tuple(train.shape)}"
        )
    if y.device != train.device:
        raise InputError(f"y and {train_name} must be on one device, got {y.device} and "
                         f"{train.device}")
    if y.shape[1:].numel() == 0:
        raise InputError(f"y and {train_name} have no features (shape {tuple(y.shape)})")
    dtype = torch.promote_types(y.dtype, train.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32  # half / bfloat16 inputs are computed in float32
    if transformed(sigma):  # batched σ under vmap: shape checks only
        sig = sigma.to(torch.float64).expand(y.shape[0]) if sigma.ndim == 0 else sigma.double()
    else:
        sig = as_sigma(sigma, y.shape[0], device=y.device, dtype=torch.float64)
    if topk is not None:
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise InputError(f"topk must be None or a positive integer, got {topk!r}")
        if topk > train.shape[0]:
            raise InputError(f"topk={topk} exceeds the number of training points N={len(train)}")
    return y.to(dtype), train.to(dtype), sig


def _topk(y, x, sig, k):
    """Softmax over the k nearest training points only (exact float64 logits); autograd
    flows through the gathered torch computation."""
    _, idx = search(y.detach(), x, k)  # [M, k]
    _, s, a, _ = softmax_gather64(y, x, idx, sig)
    return (a / s[:, None]).to(y.dtype)


# --- registration: reference, VJP, fast backends -------------------------------------------


@torch.library.custom_op("pydiffgen::empirical_denoiser_ref", mutates_args=())
def _ed_ref(y: torch.Tensor, train: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return reference.empirical_denoiser(y, train, sigma).to(y.dtype)


@torch.library.custom_op("pydiffgen::empirical_denoiser_vjp", mutates_args=())
def _ed_vjp(
    y: torch.Tensor, train: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor,
    grad: torch.Tensor,
) -> torch.Tensor:
    return reference.empirical_denoiser_vjp(y, train, sigma, denoised, grad).to(y.dtype)


def _rows_vmap(fn):
    """vmap rule for an op over rows: batch dims of any input are folded into the rows
    (the training set, argument 1, is shared; a batched one is looped over, rarely)."""

    def rule(info, in_dims, *args):
        B = info.batch_size
        flat = [a.movedim(d, 0) if d is not None else a.expand(B, *a.shape)
                for a, d in zip(args, in_dims, strict=True)]
        if in_dims[1] is not None:
            return torch.stack([fn(*(f[b] for f in flat)) for b in range(B)]), 0
        rows = flat[0].shape[1]
        out = fn(*[f.reshape(B * rows, *f.shape[2:]) if i != 1 else f[0]
                   for i, f in enumerate(flat)])
        return out.reshape(B, rows, *out.shape[1:]), 0

    return rule


def _fake(y, train, sigma, *rest):
    torch._check(y.dim() == 2 and train.dim() == 2 and y.shape[1] == train.shape[1])
    return y.new_empty(y.shape)


_vjp = register("empirical_denoiser_vjp", fake=_fake,
                vmap=_rows_vmap(lambda *a: torch.ops.pydiffgen.empirical_denoiser_vjp(*a)))


def _setup_context(ctx, inputs, output):
    y, train, sigma = inputs
    out = output[0] if isinstance(output, tuple) else output
    ctx.save_for_backward(y, train, sigma, out)
    ctx.save_for_forward(y, train, sigma, out)


def _jvp(ctx, y_t, _train_t, _sigma_t):
    # ∂D/∂y = Cov_w[y_i]/σ² is symmetric: the JVP is the same product as the VJP
    y, train, sigma, out = ctx.saved_tensors
    return _vjp.op(y, train.detach(), sigma, out, y_t.contiguous())


def _backward(ctx, grad, *_grad_err):
    y, train, sigma, out = ctx.saved_tensors
    grad_y = None
    if ctx.needs_input_grad[0]:
        grad_y = _vjp.op(y, train.detach(), sigma, out, grad.contiguous())
    return grad_y, None, None


_ref = register("empirical_denoiser_ref", fake=_fake, setup_context=_setup_context,
                backward=_backward, jvp=_jvp,
                vmap=_rows_vmap(lambda *a: torch.ops.pydiffgen.empirical_denoiser_ref(*a)))


def _reference(y, x, sig):
    return _ref(y, x, sig)


def _register_fast(name):
    """A fast backend's op ``name`` (y, train, sigma) -> (out, err [M] float64, the
    estimated logit error; not differentiable): the dense pass, run in float64."""

    def fake(y, train, sigma):
        return _fake(y, train, sigma), y.new_empty(y.shape[0], dtype=torch.float64)

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        _setup_context(ctx, inputs, output)

    return register(name, fake=fake, setup_context=setup_context, backward=_backward)


def _certified(dense64):
    """A backend's forward (y, x, σ, keys=None) -> D_M in y's dtype (``lse.denoise``;
    keys: x prepared, ``lse.Keys``): each row's exact softmax over the candidates of the
    bf16 pass where it certifies the row, the float64 pass ``dense64`` (y float64, x, σ)
    -> D elsewhere (x float32 or float64: the kernels upcast it tile by tile)."""

    def dense(y, x, sig):
        return dense64(y.double(), x, sig)

    return lambda y, x, sig, keys=None: lse.denoise(y, x, sig, dense, keys=keys).to(y.dtype)


_CPP_WHY_NOT = _native.cpu_why_not("empirical_denoiser")
if _CPP_WHY_NOT is None:
    _cpp_fast = _register_fast("empirical_denoiser")
    # the C++ kernel in float64: the dense pass
    _cpp = _certified(lambda y, x, sig: _cpp_fast(y, x, sig)[0])

if TRITON_WHY_NOT is None:
    # The Triton launcher is the op's kernel for every device (on the CPU it runs only under
    # TRITON_INTERPRET=1, which the tests use); torch.library.triton_op would fail to
    # register on machines without a GPU.
    @torch.library.custom_op("pydiffgen::empirical_denoiser_triton", mutates_args=())
    def _ed_triton(
        y: torch.Tensor, train: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from ..kernels.empirical import empirical_denoiser as launch

        mu = centre(train)
        out, R2 = launch(y, train, mu, sigma)
        dt = torch.float64 if y.dtype == torch.float64 else torch.float32
        yc_norm = (y.double() - mu.double()).norm(dim=1)
        return out, logit_error(yc_norm, R2, y.shape[1], dt, sigma)

    _triton_fast = _register_fast("empirical_denoiser_triton")
    _triton = _certified(lambda y, x, sig: _triton_fast(y, x, sig)[0])


_op = dispatch.op("empirical_denoiser")
_op.register("triton", ("cuda",), lambda *a: _triton(*a), cuda_why_not)
_op.register("cpp", ("cpu",), lambda *a: _cpp(*a), lambda: _CPP_WHY_NOT)


def _reference_checked(y, x, sig, keys=None):
    """The reference backend: float64 throughout (no candidate pass, so no ``keys``), with
    the rows whose float64 logits could still move the output by lse.TOL taken from the
    candidates."""
    return lse.denoise(y, x, sig, _reference, candidates=False).to(y.dtype)


_op.register("reference", ("cpu", "cuda"), _reference_checked)
