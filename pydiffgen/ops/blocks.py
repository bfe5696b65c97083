"""Fused denoiser blocks: GroupNorm → FiLM → SiLU and bias-free batch norm → ReLU.

``groupnorm_film_silu(x, G, weight, bias, scale, shift, eps)`` =
SiLU(GN(x)·(1 + scale) + shift), the normalise-condition-activate chain of every
σ-conditioned residual block (EDM / DDPM++; FiLM: Perez et al. 2018), and
``bf_batchnorm_relu(x, gain, eps)`` = ReLU(x·γ/std) with batch statistics, the training-mode
layer of the bias-free networks (Mohan et al. 2020). Both are memory-bound chains that
eager PyTorch runs as 4–6 kernels (and as many again backward); fused, the forward reads
x once for the statistics and once for the output, the backward reads (x, dy) twice and
writes dx once, computing every parameter gradient in the same pass.

Backends in priority order (``backend=`` / ``PYDIFFGEN_BACKEND`` force one):
  groupnorm_film_silu  CUDA: triton (pydiffgen.kernels.groupnorm_film_silu, custom ops
                       ``pydiffgen::groupnorm_film_silu_triton_{fwd,bwd}``) → reference;
                       CPU: cpp (``pydiffgen::groupnorm_film_silu_{fwd,bwd}``) → reference.
  bf_batchnorm_relu    CPU: cpp (``pydiffgen::bf_batchnorm_relu_{fwd,bwd}``) → reference;
                       CUDA: reference.
Each fused backend is a forward and a backward custom op registered once
(``ops._register``: fake kernels, so ``torch.compile`` traces them, and autograd). The
reference backends are the eager PyTorch chains of ``pydiffgen.ops.reference``
(differentiable to any order and under ``torch.func`` transforms); inputs wrapped by
``torch.func`` (vmap, jacrev, jvp) always take them, since the fused ops define
first-order reverse mode only. Models' ``fused=False`` is ``backend="reference"``.
"""

from __future__ import annotations

import torch

from .. import _native
from ..errors import InputError
from ..kernels import TRITON_WHY_NOT, cuda_why_not
from . import dispatch, reference
from ._register import Registered, register, transformed

__all__ = ["bf_batchnorm_relu", "groupnorm_film_silu"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _acc_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_param(t, name, shape, x):
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise InputError(f"{name} must be a tensor of shape {list(shape)} or None, "
                         f"got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise InputError(f"{name} must have shape {list(shape)} (x is {list(x.shape)}), "
                         f"got {list(t.shape)}")
    if t.dtype not in _FLOAT_DTYPES:
        raise InputError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if t.device != x.device:
        raise InputError(f"{name} is on {t.device} but x is on {x.device}")


def _check_x(x, name="x"):
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor [B, C, *], got {type(x).__name__}")
    if x.ndim < 2:
        raise InputError(f"{name} must be [B, C, *] (at least 2 dimensions), got shape "
                         f"{tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise InputError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")


def _check_eps(eps):
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise InputError(f"eps must be a number >= 0, got {eps!r}")
    return float(eps)


# =========================================================================================
# GroupNorm → FiLM → SiLU
# =========================================================================================


def groupnorm_film_silu(x, num_groups: int, weight=None, bias=None, scale=None, shift=None,
                        eps: float = 1e-5, backend: str | None = None):
    """``y = SiLU(GN(x)·(1 + scale) + shift)``, forward and backward fused.

    x: ``[B, C, *]`` (NCHW or channels-last); num_groups: G, dividing C; weight, bias: ``[C]``
    GroupNorm affine (None: 1 and 0); scale, shift: ``[B, C]`` per-sample FiLM from the
    σ-embedding (None: 0). Statistics are per (sample, group) with the biased variance.
    Returns y with x's shape and dtype; differentiable in x, weight, bias, scale and shift.
    bf16 / fp16 inputs are computed in float32.
    """
    _check_x(x)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise InputError(f"num_groups must be a positive integer, got {num_groups!r}")
    B, C = x.shape[:2]
    if C % num_groups:
        raise InputError(f"num_groups={num_groups} must divide the channel count C={C} of x "
                         f"(shape {tuple(x.shape)})")
    _check_param(weight, "weight", (C,), x)
    _check_param(bias, "bias", (C,), x)
    _check_param(scale, "scale", (B, C), x)
    _check_param(shift, "shift", (B, C), x)
    eps = _check_eps(eps)
    impl = dispatch.op("groupnorm_film_silu").select(x.device.type, backend)
    if x.numel() == 0 or transformed(x, weight, bias, scale, shift):
        return reference.groupnorm_film_silu(x, num_groups, weight, bias, scale, shift, eps)
    return impl.fn(x, num_groups, weight, bias, scale, shift, eps)


def _gfs_params(x, weight, bias, scale, shift):
    """None → the neutral value (weight 1, bias 0, scale 0, shift 0), in the compute dtype."""
    B, C = x.shape[:2]
    acc = _acc_dtype(x)
    if weight is None:
        weight = torch.ones(C, dtype=acc, device=x.device)
    if bias is None:
        bias = torch.zeros(C, dtype=acc, device=x.device)
    if scale is None:
        scale = torch.zeros(B, C, dtype=acc, device=x.device)
    if shift is None:
        shift = torch.zeros(B, C, dtype=acc, device=x.device)
    return weight, bias, scale, shift


def _keep_layout(x, y):
    """y in x's memory format when x is channels-last (the C++ kernels write NCHW)."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last):
        return y.contiguous(memory_format=torch.channels_last)
    return y


def _register_gfs(fwd_name: str, bwd_name: str, keep_layout: bool) -> Registered:
    """Register a backend's forward op ``fwd_name`` (x, G, weight, bias, scale, shift, eps)
    -> (y, mean [B, G], rstd [B, G]) with its backward op ``bwd_name`` (grad, x, mean, rstd,
    G, weight, bias, scale, shift) -> (dx, dweight [C], dbias [C], dscale [B, C],
    dshift [B, C])."""
    fmt = torch.preserve_format if keep_layout else torch.contiguous_format

    def fake_fwd(x, num_groups, weight, bias, scale, shift, eps):
        acc = _acc_dtype(x)
        B = x.shape[0]
        return (torch.empty_like(x, memory_format=fmt),
                x.new_empty((B, num_groups), dtype=acc), x.new_empty((B, num_groups), dtype=acc))

    def fake_bwd(grad, x, mean, rstd, num_groups, weight, bias, scale, shift):
        acc = _acc_dtype(x)
        B, C = x.shape[:2]
        return (torch.empty_like(x, memory_format=fmt), x.new_empty((C,), dtype=acc),
                x.new_empty((C,), dtype=acc), x.new_empty((B, C), dtype=acc),
                x.new_empty((B, C), dtype=acc))

    bwd = register(bwd_name, fake=fake_bwd).op

    def setup_context(ctx, inputs, output):
        x, num_groups, weight, bias, scale, shift, _eps = inputs
        _, mean, rstd = output
        ctx.num_groups = num_groups
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)  # no zero gradients for the statistics
        ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)

    def backward(ctx, grad, _grad_mean, _grad_rstd):
        if grad is None:  # y unused (gradients are not materialized)
            return (None,) * 7
        x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
        dx, dw, db, ds, dt = bwd(grad, x, mean, rstd, ctx.num_groups, weight, bias, scale,
                                 shift)
        need = ctx.needs_input_grad
        return (dx.to(x.dtype) if need[0] else None, None,
                dw.to(weight.dtype) if need[2] else None,
                db.to(bias.dtype) if need[3] else None,
                ds.to(scale.dtype) if need[4] else None,
                dt.to(shift.dtype) if need[5] else None, None)

    return register(fwd_name, fake=fake_fwd, setup_context=setup_context, backward=backward)


_GFS_CPP_WHY_NOT = _native.cpu_why_not("groupnorm_film_silu_fwd", "groupnorm_film_silu_bwd")
if _GFS_CPP_WHY_NOT is None:
    _gfs_cpp_op = _register_gfs("groupnorm_film_silu_fwd", "groupnorm_film_silu_bwd",
                                keep_layout=False)


def _gfs_cpp(x, G, weight, bias, scale, shift, eps):
    w, b, s, t = _gfs_params(x, weight, bias, scale, shift)
    return _keep_layout(x, _gfs_cpp_op(x, G, w, b, s, t, eps)[0])


if TRITON_WHY_NOT is None:
    # The Triton launchers are the ops' kernels for every device (on the CPU they run only
    # under TRITON_INTERPRET=1, which the tests use); torch.library.triton_op would fail to
    # register on machines without a GPU.
    @torch.library.custom_op("pydiffgen::groupnorm_film_silu_triton_fwd", mutates_args=())
    def _gfs_triton_fwd(
        x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor,
        scale: torch.Tensor, shift: torch.Tensor, eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..kernels.groupnorm_film_silu import forward

        return forward(x, num_groups, weight, bias, scale, shift, eps)

    @torch.library.custom_op("pydiffgen::groupnorm_film_silu_triton_bwd", mutates_args=())
    def _gfs_triton_bwd(
        grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
        num_groups: int, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor,
        shift: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..kernels.groupnorm_film_silu import backward

        return backward(grad, x, mean, rstd, num_groups, weight, bias, scale, shift)

    _gfs_triton_op = _register_gfs("groupnorm_film_silu_triton_fwd",
                                   "groupnorm_film_silu_triton_bwd", keep_layout=True)


def _gfs_triton(x, G, weight, bias, scale, shift, eps):
    w, b, s, t = _gfs_params(x, weight, bias, scale, shift)
    return _gfs_triton_op(x, G, w, b, s, t, eps)[0]


_gfs = dispatch.op("groupnorm_film_silu")
_gfs.register("triton", ("cuda",), _gfs_triton, cuda_why_not)
_gfs.register("cpp", ("cpu",), _gfs_cpp, lambda: _GFS_CPP_WHY_NOT)
_gfs.register("reference", ("cpu", "cuda"), reference.groupnorm_film_silu)


# =========================================================================================
# bias-free batch norm (training statistics) → ReLU
# =========================================================================================


def bf_batchnorm_relu(x, gain, eps: float = 1e-5, backend: str | None = None):
    """``(ReLU(x·γ/std), std)`` with ``std_c = sqrt(Var_{B,*}[x_c] + eps)``, fused.

    The training-mode bias-free batch norm of Mohan et al. (2020) (no mean subtraction of
    x, no offset) followed by ReLU. x: ``[B, C, *]``; gain γ: ``[C]``. Returns
    ``(y [B, C, *], std [C])`` (std in float32, or float64 for float64 x); both are
    differentiable (the layer's running estimate is updated from std by the caller).
    """
    _check_x(x)
    _check_param(gain, "gain", (x.shape[1],), x)
    if gain is None:
        raise InputError("gain must be a tensor of shape [C], got None")
    eps = _check_eps(eps)
    if x.numel() == 0:
        raise InputError(f"x is empty (shape {tuple(x.shape)}): batch statistics need at "
                         "least one element per channel")
    impl = dispatch.op("bf_batchnorm_relu").select(x.device.type, backend)
    if transformed(x, gain):
        return reference.bf_batchnorm_relu(x, gain, eps)
    return impl.fn(x, gain, eps)


def _register_bfbn() -> Registered:
    """Register ``bf_batchnorm_relu_fwd`` (x, gain, eps) -> (y, mean [C], std [C]) with its
    backward op (grad, grad_mean, grad_std, x, mean, std, gain) -> (dx, dgain [C])."""

    def fake_fwd(x, gain, eps):
        acc = _acc_dtype(x)
        C = x.shape[1]
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                x.new_empty((C,), dtype=acc), x.new_empty((C,), dtype=acc))

    def fake_bwd(grad, grad_mean, grad_std, x, mean, std, gain):
        return (torch.empty_like(x, memory_format=torch.contiguous_format),
                x.new_empty((x.shape[1],), dtype=_acc_dtype(x)))

    bwd = register("bf_batchnorm_relu_bwd", fake=fake_bwd).op

    def setup_context(ctx, inputs, output):
        x, gain, _eps = inputs
        _, mean, std = output
        ctx.mark_non_differentiable(mean)
        ctx.set_materialize_grads(False)  # backward fills an absent gradient itself
        ctx.save_for_backward(x, mean, std, gain)

    def backward(ctx, grad, grad_mean, grad_std):
        if grad is None and grad_std is None:  # neither y nor std used
            return None, None, None
        x, mean, std, gain = ctx.saved_tensors
        grad = torch.zeros_like(x) if grad is None else grad
        grad_mean = torch.zeros_like(mean) if grad_mean is None else grad_mean
        grad_std = torch.zeros_like(std) if grad_std is None else grad_std
        dx, dgain = bwd(grad, grad_mean, grad_std, x, mean, std, gain)
        need = ctx.needs_input_grad
        return (dx.to(x.dtype) if need[0] else None,
                dgain.to(gain.dtype) if need[1] else None, None)

    return register("bf_batchnorm_relu_fwd", fake=fake_fwd, setup_context=setup_context,
                    backward=backward)


_BFBN_CPP_WHY_NOT = _native.cpu_why_not("bf_batchnorm_relu_fwd", "bf_batchnorm_relu_bwd")
if _BFBN_CPP_WHY_NOT is None:
    _bfbn_cpp_op = _register_bfbn()


def _bfbn_cpp(x, gain, eps):
    y, _, std = _bfbn_cpp_op(x, gain, eps)
    return _keep_layout(x, y), std


_bfbn = dispatch.op("bf_batchnorm_relu")
_bfbn.register("cpp", ("cpu",), _bfbn_cpp, lambda: _BFBN_CPP_WHY_NOT)
_bfbn.register("reference", ("cpu", "cuda"), reference.bf_batchnorm_relu)
