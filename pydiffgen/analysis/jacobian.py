"""Jacobians of denoisers: full batched Jacobians, effective dimension and SURE.

For a denoiser ``D(y [B, *F], σ) -> [B, *F]`` with d = ∏F, the Jacobian of sample b is
``J[b] = ∂D(y_b)/∂y_b`` ([d, d], row i = gradient of output pixel i). Kadkhodaie et al.
(ICLR 2024, §4): for a bias-free ReLU network ``D(y) = J(y) y`` exactly (eval mode), and
with J ≈ symmetric ``D(y) = Σ_k λ_k ⟨y, e_k⟩ e_k`` shrinks y along an adaptive basis; for
the optimal denoiser ``J = Cov[x | y]/σ²`` and its trace is the effective dimension.

Two ways to get J (``method=``):

- ``"func"``: reverse mode with ``torch.func`` (one forward at y, then batches of VJPs
  with basis cotangents, vmapped). Works for any differentiable denoiser. Rows of all B
  samples come out of one backward pass: samples in a batch do not interact (eval mode),
  so the cotangent e_i in every sample gives row i of every J[b].
- ``"frozen"``: for bias-free piecewise-linear networks (``piecewise_linear = True``):
  J(y) is the network with the ReLU masks of y frozen (:mod:`pydiffgen.models.piecewise`),
  so its columns are the frozen network applied to the identity basis, in large batches,
  without autograd. Checked on every call: replaying y must reproduce D(y), replaying 0
  must give 0 and the frozen Jᵀu must equal autograd's for a random u, else the model
  broke its promise and an error says so.
- ``"auto"``: frozen when the denoiser declares ``piecewise_linear``, else func.

Numerics: computed in y's dtype (pass float64 inputs and a float64 model for reference
accuracy); TF32 is off while computing (docs/design.md#numerics); nn.Modules are evaluated in eval
mode (BF-BatchNorm then divides by its running std, a linear map) and restored after.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from .._checks import as_sigma, check_positive_int, check_tensor
from ..errors import InputError

__all__ = ["effective_dimension", "jacobian", "sure_mse"]

METHODS = ("auto", "func", "frozen")
# Default work per pass: rows in flight × d × itemsize ≈ this many bytes (one channel of
# one feature map). 1 MiB (256 rows at d = 1024) keeps CPU convolutions near their best
# speed with feature maps of tens of MB; GPUs want larger batches.
_ROW_BUDGET_BYTES = {"cpu": 1 << 20, "cuda": 1 << 24}


# --------------------------------------------------------------------------- set-up


@contextmanager
def precise_math():
    """TF32 off (matmul and cuDNN) and float32 matmul precision "highest", restored after."""
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    cudnn_tf32 = torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
        torch.set_float32_matmul_precision(precision)


@contextmanager
def eval_mode(denoiser):
    """nn.Modules in eval mode (per-sample, deterministic), their training flag restored."""
    if not isinstance(denoiser, nn.Module):
        yield
        return
    was_training = denoiser.training
    denoiser.eval()
    try:
        yield
    finally:
        denoiser.train(was_training)


def check_denoiser_inputs(denoiser, y, sigma):
    """Validate ``(denoiser, y [B, *F], sigma)``; returns ``(y, sigma [B])``."""
    if not callable(denoiser):
        raise InputError(f"denoiser must be callable D(y, sigma), got {type(denoiser).__name__}")
    y = check_tensor(y, "y", min_ndim=2)
    sigma = as_sigma(sigma, y.shape[0], device=y.device, dtype=y.dtype)
    return y, sigma


def denoise(denoiser, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D(y, sigma) [B, *F], refused unless a tensor of y's shape: a callable that returns
    a list, None, an array or another shape would fail deep inside torch.func, or (same
    size, other shape) give a silently wrong Jacobian."""
    out = denoiser(y, sigma)
    if not isinstance(out, torch.Tensor) or out.shape != y.shape:
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else \
            type(out).__name__
        raise InputError(f"denoiser(y, sigma) must return a tensor of y's shape "
                         f"{tuple(y.shape)}, got {got}")
    return out


def resolve_method(denoiser, method: str) -> str:
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    declared = bool(getattr(denoiser, "piecewise_linear", False))
    if method == "auto":
        return "frozen" if declared else "func"
    if method == "frozen" and not (declared and isinstance(denoiser, nn.Module)):
        raise InputError(
            f"method='frozen' needs an nn.Module denoiser that declares piecewise_linear = True "
            f"(bias-free ReLU networks such as bf_unet, bf_cnn); {type(denoiser).__name__} "
            "does not: use method='func'"
        )
    return method


def default_chunk(batch: int, d: int, like: torch.Tensor) -> int:
    """Basis vectors per pass and sample so that batch·chunk rows of a [d] map fit the budget."""
    budget = _ROW_BUDGET_BYTES.get(like.device.type, 1 << 24)
    return max(1, min(d, budget // max(1, batch * d * like.element_size())))


# --------------------------------------------------------------------------- linearizations


class Linearization:
    """The linear map v ↦ J(y) v of a denoiser at a batch y, applied to blocks.

    Blocks are ``[B, m, d]``: m vectors per sample, sample b's vectors go through J[b].
    """

    def __init__(self, denoiser, y: torch.Tensor, sigma: torch.Tensor):
        self.denoiser = denoiser
        self.shape = y.shape  # [B, *F]
        self.B = y.shape[0]
        self.d = math.prod(y.shape[1:])
        self.y = y
        self.sigma = sigma  # [B]

    def jvp(self, V: torch.Tensor) -> torch.Tensor:  # [B, m, d] -> J V
        raise NotImplementedError

    def vjp(self, U: torch.Tensor) -> torch.Tensor:  # [B, m, d] -> Jᵀ U
        raise NotImplementedError

    def sym(self, V: torch.Tensor) -> torch.Tensor:
        """The symmetric part ((J + Jᵀ)/2) V."""
        return (self.jvp(V) + self.vjp(V)) / 2


class FuncLinearization(Linearization):
    """J V and Jᵀ U with torch.func (any differentiable denoiser)."""

    def __init__(self, denoiser, y, sigma):
        super().__init__(denoiser, y, sigma)
        self.y_flat = y.detach().reshape(self.B, self.d)
        _, self._vjp_fn = torch.func.vjp(self._f, self.y_flat)

    def _f(self, y_flat: torch.Tensor) -> torch.Tensor:  # [B, d] -> [B, d]
        return denoise(self.denoiser, y_flat.view(self.shape), self.sigma).reshape(self.B, self.d)

    def vjp(self, U):
        # vmapped over the m vectors; each is one cotangent [B, d] for the whole batch
        (out,) = torch.func.vmap(self._vjp_fn, in_dims=1, out_dims=1)(U)
        return out

    def jvp(self, V):
        def one(t):  # [B, d] tangent -> [B, d]
            return torch.func.jvp(self._f, (self.y_flat,), (t,))[1]

        return torch.func.vmap(one, in_dims=1, out_dims=1)(V)


class FrozenLinearization(Linearization):
    """J V by the network with y's ReLU masks frozen; Jᵀ U by autograd through that linear map."""

    def __init__(self, denoiser, y, sigma, pattern):
        super().__init__(denoiser, y, sigma)
        self.pattern = pattern
        with torch.no_grad():
            # recorded in the replay's memory format, so masks and activations match
            D_y = pattern.record(denoiser, _fast_layout(y), sigma)  # [B, *F]
        self._check_promise(D_y.reshape(self.B, self.d))

    def _check_promise(self, D_flat: torch.Tensor) -> None:
        """piecewise_linear is a promise; test it at y: D(y) = J(y) y, J(y)·0 = 0, and the
        frozen Jᵀu equals autograd's for one random u per sample (this catches a ReLU
        applied outside nn.ReLU modules, which the first two may miss)."""
        y = self.y
        with torch.no_grad():
            both = torch.stack([y, torch.zeros_like(y)], dim=1).reshape(self.B, 2, self.d)
            replay = self.jvp(both)  # [B, 2, d]
        gen = torch.Generator().manual_seed(0)
        u = torch.randn((self.B, 1, self.d), generator=gen, dtype=torch.float64).to(y)
        with torch.enable_grad():
            x = y.detach().requires_grad_(True)
            (g_true,) = torch.autograd.grad(denoise(self.denoiser, x, self.sigma), x,
                                            u.view(self.shape))
        g_frozen = self.vjp(u)[:, 0]
        tol = 1e-3 if y.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8

        def off(a, b, scale):
            return bool((a - b).abs().amax() > tol * scale.abs().amax().clamp_min(1e-30))

        g_true = g_true.reshape(self.B, self.d)
        if (off(replay[:, 0], D_flat, D_flat) or off(replay[:, 1], 0, D_flat)
                or off(g_frozen, g_true, g_true)):
            raise InputError(
                f"{type(self.denoiser).__name__} declares piecewise_linear but its frozen-ReLU "
                "replay is not its Jacobian at y (D(y) = J(y) y, J(y)·0 = 0 and Jᵀu checked: "
                "a bias, a functional relu or another nonlinearity outside nn.ReLU "
                "modules?); use method='func'"
            )

    def _apply(self, V: torch.Tensor) -> torch.Tensor:  # [B, m, d] -> [B, m, d]
        m = V.shape[1]
        x = _fast_layout(V.reshape(self.B * m, *self.shape[1:]))
        sigma = self.sigma.repeat_interleave(m)  # [B·m]
        out = self.pattern.replay(self.denoiser, x, sigma, group=m)
        return out.reshape(self.B, m, self.d)

    def jvp(self, V):
        with torch.no_grad():
            return self._apply(V)

    def vjp(self, U):
        with torch.enable_grad():
            x = torch.zeros_like(U).requires_grad_(True)
            out = self._apply(x)
            (g,) = torch.autograd.grad(out, x, U)
        return g

    def sym(self, V):
        # one forward and one backward give both J V (the output) and Jᵀ V (the gradient
        # with cotangent V), since the frozen map is linear
        with torch.enable_grad():
            x = V.detach().requires_grad_(True)
            out = self._apply(x)
            (g,) = torch.autograd.grad(out, x, V)
        return (out.detach() + g) / 2


def _fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Images in channels-last order: convolutions (oneDNN, cuDNN) run fastest on NHWC."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


@contextmanager
def linearize(denoiser, y, sigma, method: str = "auto"):
    """Context in which the returned :class:`Linearization` of ``denoiser`` at y is valid.

    y, sigma must be checked already (:func:`check_denoiser_inputs`). Holds eval mode,
    precise math and (frozen) the swapped ReLUs for the duration.
    """
    method = resolve_method(denoiser, method)
    with precise_math(), eval_mode(denoiser):
        if method == "frozen":
            from ..models.piecewise import frozen_relus

            with frozen_relus(denoiser, fold_batchnorm=True) as pattern:
                yield FrozenLinearization(denoiser, y, sigma, pattern)
        else:
            yield FuncLinearization(denoiser, y, sigma)


def _basis_block(B: int, d: int, start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
    """[B, stop−start, d]: e_start … e_{stop−1} for every sample."""
    E = torch.zeros(stop - start, d, dtype=like.dtype, device=like.device)
    E[:, start:stop].fill_diagonal_(1)
    return E.unsqueeze(0).expand(B, -1, -1)


# --------------------------------------------------------------------------- public API


def jacobian(denoiser, y, sigma, *, chunk: int | None = None, method: str = "auto"):
    """Full Jacobians ``J[b] = ∂D(y_b)/∂y_b``, ``[B, d, d]`` in y's dtype (d = ∏F).

    ``chunk``: basis vectors per pass and sample (default: about 1 MiB (CPU) or 16 MiB
    (GPU) per channel of a feature map in flight, e.g. 256 rows at d = 1024 on the CPU).
    ``method``: ``"auto"``, ``"func"`` (torch.func reverse mode, any denoiser) or
    ``"frozen"`` (frozen ReLU masks, bias-free piecewise-linear models); see the module
    docstring.
    """
    y, sigma = check_denoiser_inputs(denoiser, y, sigma)
    B, d = y.shape[0], math.prod(y.shape[1:])
    chunk = default_chunk(B, d, y) if chunk is None else chunk
    chunk = check_positive_int(chunk, "chunk")
    J = torch.empty(B, d, d, dtype=y.dtype, device=y.device)
    with linearize(denoiser, y, sigma, method) as lin:
        frozen = isinstance(lin, FrozenLinearization)
        for start in range(0, d, chunk):
            stop = min(d, start + chunk)
            E = _basis_block(B, d, start, stop, y)  # [B, c, d]
            if frozen:  # columns: J e_j
                J[:, :, start:stop] = lin.jvp(E).transpose(1, 2)
            else:  # rows: e_iᵀ J = (Jᵀ e_i)ᵀ
                J[:, start:stop, :] = lin.vjp(E).detach()
    return J


def _rademacher(B: int, probes: int, d: int, seed: int, like: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randint(0, 2, (B, probes, d), generator=gen, dtype=torch.int8)
    return (2 * z - 1).to(dtype=like.dtype, device=like.device)  # [B, probes, d] of ±1


def hutchinson_trace(lin: Linearization, probes: int, seed: int, chunk: int):
    """Hutchinson (1989): tr J = E[zᵀ J z] for Rademacher z; mean and standard error [B]."""
    z_all = _rademacher(lin.B, probes, lin.d, seed, lin.y)
    samples = []
    for start in range(0, probes, chunk):
        z = z_all[:, start : start + chunk]  # [B, c, d]
        samples.append((z * lin.jvp(z)).sum(-1))  # [B, c]: zᵀ J z
    s = torch.cat(samples, dim=1)  # [B, probes]
    stderr = s.std(dim=1) / math.sqrt(probes) if probes > 1 else torch.full_like(s[:, 0], math.nan)
    return s.mean(dim=1), stderr


def effective_dimension(denoiser, y, sigma, probes: int = 64, *, seed: int = 0,
                        method: str = "auto", chunk: int | None = None):
    """Effective dimension tr J(y) per image by Hutchinson's estimator, ``(estimate [B],
    stderr [B])``, from ``probes`` JVPs with Rademacher vectors (no full Jacobian).

    Kadkhodaie et al. (ICLR 2024): for the optimal denoiser J = Cov[x|y]/σ², so tr J is
    the dimensionality of the local signal subspace. The estimate is unbiased; stderr is
    the sample standard deviation of zᵀJz over probes / √probes. The probes come from
    ``torch.Generator().manual_seed(seed)``: reproducible.
    """
    y, sigma = check_denoiser_inputs(denoiser, y, sigma)
    probes = check_positive_int(probes, "probes")
    _check_seed(seed)
    d = math.prod(y.shape[1:])
    chunk = default_chunk(y.shape[0], d, y) if chunk is None else chunk
    chunk = check_positive_int(chunk, "chunk")
    with linearize(denoiser, y, sigma, method) as lin:
        est, err = hutchinson_trace(lin, probes, seed, chunk)
    return est.detach(), err.detach()


def sure_mse(denoiser, y, sigma, probes: int = 64, *, seed: int = 0, method: str = "auto",
             chunk: int | None = None):
    """Stein's unbiased risk estimate of the per-pixel MSE of D at noisy images y,
    ``(estimate [B], stderr [B])``.

    docs/science.md#sure (Kadkhodaie et al.): E‖D(y) − x‖² = E[‖y − D(y)‖² − σ²d + 2σ² tr J].
    Per pixel, as every MSE in this project (E(σ) = ‖D − x‖²/d):
    ``SURE = ‖D(y) − y‖²/d − σ² + 2σ²·tr(J)/d``, with tr J from
    :func:`effective_dimension` (its stderr scaled by 2σ²/d is the returned stderr). Needs
    no clean image: y = x + σ n with n ~ N(0, I) of the σ given.
    """
    y, sigma = check_denoiser_inputs(denoiser, y, sigma)
    d = math.prod(y.shape[1:])
    tr, tr_err = effective_dimension(denoiser, y, sigma, probes, seed=seed, method=method,
                                     chunk=chunk)
    with torch.no_grad(), precise_math(), eval_mode(denoiser):
        D_y = denoise(denoiser, y, sigma)
    resid = (D_y - y).reshape(y.shape[0], -1).double().square().sum(1) / d  # [B]
    s2 = sigma.double().square()
    # Stein 1981, docs/science.md#sure: MSE = ‖y − D‖² − σ²d + 2σ² tr J, divided by d
    sure = resid - s2 + 2 * s2 * tr.double() / d
    return sure.to(y.dtype), (2 * s2 * tr_err.double() / d).to(y.dtype)


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
