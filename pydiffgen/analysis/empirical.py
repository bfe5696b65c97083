"""The empirical optimal denoiser as a model, its exact Jacobian, and smoothed variants.

- :class:`EmpiricalDenoiser`: D_M(y; σ) = Σ_i softmax_i(−‖y − y_i‖²/(2σ²)) y_i, the exact
  posterior mean of its training set (docs/science.md#empirical-optimum); deterministic sampling
  reproduces training images. ``.jacobian`` is the closed form Cov_w[y_i]/σ².
- :class:`BlurredEmpiricalDenoiser`: the δ-blurred optimum of Kaiser & Kollmann (2026,
  docs/science.md#blurred-optimum), y_δ(y; σ) = (σ²·D_M(y; √(σ² + δ²)) + δ²·y)/(σ² + δ²): the exact
  posterior mean when every training point is smeared by N(0, δ²I).
- :class:`SmoothedEmpiricalDenoiser`: the smoothed closed-form score of Scarvelis et al.
  (Closed-Form Diffusion Models, 2023): softmax weights averaged over perturbations
  y + s·ε_k of the input (a seeded, fixed set of K perturbations).

All are :class:`pydiffgen.models.Denoiser` modules, ``forward(y [B, *F], sigma) -> [B, *F]``,
so every sampler and analysis runs on them.
"""

from __future__ import annotations

import torch

from .._checks import as_sigma, check_positive_float, check_positive_int, check_tensor
from ..errors import InputError
from ..models.base import Denoiser
from ..ops.empirical import EmpiricalIndex, empirical_denoiser


def _check_y(y, train):
    check_tensor(y, "y", min_ndim=2, nonempty=False)
    if y.shape[1:] != train.shape[1:]:
        raise InputError(
            f"y must have shape [B, {', '.join(map(str, train.shape[1:]))}] like the training "
            f"set, got {tuple(y.shape)}"
        )


class EmpiricalDenoiser(Denoiser):
    """The empirical optimal denoiser of ``train [N, *F]`` (memorizes by construction).

    ``backend`` and ``topk`` are passed to :func:`pydiffgen.ops.empirical_denoiser`.
    The training set is the non-persistent buffer ``train_set`` (``nn.Module.train`` is
    taken): ``.to(device)`` moves it, checkpoints do not store it. Samplers and sweeps call
    the model at many σ: the training set is prepared once (``pydiffgen.ops.EmpiricalIndex``,
    2·N·D bytes more), again only when ``train_set`` is replaced (``.to``, assignment).
    """

    def __init__(self, train: torch.Tensor, *, backend: str | None = None,
                 topk: int | None = None):
        check_tensor(train, "train", min_ndim=2)
        super().__init__(backend=backend, topk=topk)
        self.register_buffer("train_set", train.detach(), persistent=False)
        self.backend = backend
        self.topk = topk
        self.prepared = None  # (train_set, its EmpiricalIndex), built on the first call

    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:
        if self.topk is not None:
            return empirical_denoiser(y, self.train_set, sigma, self.backend, topk=self.topk)
        return self.index()(y, sigma)

    def index(self) -> EmpiricalIndex:
        """The training set prepared for repeated calls, rebuilt when ``train_set`` is."""
        if self.prepared is None or self.prepared[0] is not self.train_set:
            self.prepared = self.train_set, EmpiricalIndex(self.train_set, self.backend)
        return self.prepared[1]

    def weights(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """Posterior weights w_i = softmax_i(−‖y − y_i‖²/(2σ²)) as float64 [B, N].

        Exact float64 logits (mean-centred expansion); holds a [B, N] matrix, so meant for
        analysis batches, not for the N × M streaming the op does.
        """
        _check_y(y, self.train_set)
        sig = as_sigma(sigma, y.shape[0], device=y.device, dtype=torch.float64)
        x = self.train_set.reshape(len(self.train_set), -1).double()
        mu = x.mean(0)
        xc = x - mu
        yc = y.reshape(len(y), -1).double() - mu
        # −‖y − x‖²/(2σ²) up to a per-row constant
        logits = (yc @ xc.T - 0.5 * xc.square().sum(1)) / sig[:, None].square()
        return torch.softmax(logits, dim=1)

    def jacobian(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """Exact Jacobian ∂D_M/∂y = Cov_w[y_i]/σ², float64-computed, [B, d, d] (d = ∏F).

        Cov_w[y_i] = Σ_i w_i (y_i − D)(y_i − D)ᵀ with D = Σ_i w_i y_i; symmetric PSD.
        Returned in y's dtype (float64 for float64 y). Only training points with nonzero
        weight enter the sum, so small σ costs little.
        """
        w = self.weights(y, sigma)  # [B, N]
        sig = as_sigma(sigma, y.shape[0], device=y.device, dtype=torch.float64)
        x = self.train_set.reshape(len(self.train_set), -1).double()
        d = x.shape[1]
        out = torch.empty(len(y), d, d, dtype=torch.float64, device=y.device)
        for b in range(len(y)):
            nz = torch.nonzero(w[b] > 0).squeeze(1)
            wb, xb = w[b, nz], x[nz]  # [n], [n, d]
            xb = xb - wb @ xb  # y_i − D
            out[b] = (xb.T * wb) @ xb / sig[b] ** 2
        dtype = y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32
        return out.to(dtype)


class BlurredEmpiricalDenoiser(Denoiser):
    """δ-blurred empirical optimum (Kaiser & Kollmann 2026), a model of denoiser error.

    y_δ(y; σ) = (σ²·D_M(y; √(σ² + δ²)) + δ²·y) / (σ² + δ²): the posterior mean of x given
    y = x + σn when x ~ (1/N) Σ_i N(y_i, δ²I). δ → 0 gives D_M; large δ shrinks towards
    y (and D_M at a larger noise level). ``jacobian`` is exact as well.
    """

    def __init__(self, train: torch.Tensor, delta: float, *, backend: str | None = None):
        check_tensor(train, "train", min_ndim=2)
        delta = check_positive_float(delta, "delta")
        super().__init__(delta=delta, backend=backend)
        self.optimum = EmpiricalDenoiser(train, backend=backend)
        self.delta = delta

    @property
    def train_set(self) -> torch.Tensor:
        return self.optimum.train_set

    def _coeffs(self, y, sigma):
        sig = as_sigma(sigma, y.shape[0], device=y.device, dtype=torch.float64)
        var = sig.square() + self.delta**2  # σ² + δ²  [B]
        return sig, var

    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:
        _check_y(y, self.train_set)
        sig, var = self._coeffs(y, sigma)
        D = self.optimum(y, var.sqrt())  # D_M(y; √(σ² + δ²))
        shape = (-1,) + (1,) * (y.ndim - 1)
        a = (sig.square() / var).to(D.dtype).reshape(shape)
        return a * D + (1 - a) * y.to(D.dtype)

    def jacobian(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """∂y_δ/∂y = σ²/(σ²+δ²)·Cov_w/(σ²+δ²) + δ²/(σ²+δ²)·I, [B, d, d]."""
        sig, var = self._coeffs(y, sigma)
        J = self.optimum.jacobian(y, var.sqrt()).double()
        a = (sig.square() / var)[:, None, None]
        eye = torch.eye(J.shape[1], dtype=torch.float64, device=J.device)
        return (a * J + (1 - a) * eye).to(J.dtype if y.dtype != torch.float64 else y.dtype)


class SmoothedEmpiricalDenoiser(Denoiser):
    """σ-smoothed closed-form denoiser (Scarvelis, Borde & Solomon, Closed-Form Diffusion
    Models, 2023): softmax weights averaged over perturbations of the input.

    Estimator: with a fixed set ε_1..ε_K ~ N(0, I) of shape F drawn once from
    ``torch.Generator().manual_seed(seed)`` (float32, on the CPU, then moved),
        w̄_i(y) = (1/K) Σ_k softmax_i(−‖y + s·ε_k − y_i‖²/(2σ²)),
        D_s(y; σ) = Σ_i w̄_i(y) y_i = (1/K) Σ_k D_M(y + s·ε_k; σ).
    The same K perturbations are used for every input and call, so D_s is a deterministic
    function of (y, σ) and sampling it with a deterministic sampler is reproducible.
    s = 0 would be D_M; s > 0 blends neighbouring training points, which lets samples
    leave the training set. The score is (D_s − y)/σ².
    """

    def __init__(self, train: torch.Tensor, s: float, *, n_perturb: int = 16, seed: int = 0,
                 backend: str | None = None, topk: int | None = None):
        check_tensor(train, "train", min_ndim=2)
        s = check_positive_float(s, "s")
        n_perturb = check_positive_int(n_perturb, "n_perturb")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r}")
        super().__init__(s=s, n_perturb=n_perturb, seed=seed, backend=backend, topk=topk)
        self.optimum = EmpiricalDenoiser(train, backend=backend, topk=topk)
        gen = torch.Generator().manual_seed(seed)
        eps = torch.randn((n_perturb, *train.shape[1:]), generator=gen, dtype=torch.float32)
        self.register_buffer("eps", eps, persistent=False)  # [K, *F]
        self.s = s

    @property
    def train_set(self) -> torch.Tensor:
        return self.optimum.train_set

    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:
        _check_y(y, self.train_set)
        B, K = y.shape[0], self.eps.shape[0]
        sig = as_sigma(sigma, B, device=y.device, dtype=torch.float64)
        # [B, K, *F] perturbed inputs y + s·ε_k, evaluated as one batch of B·K
        yp = y[:, None] + self.s * self.eps.to(device=y.device, dtype=y.dtype)[None]
        D = self.optimum(yp.reshape(B * K, *y.shape[1:]), sig.repeat_interleave(K))
        return D.reshape(B, K, *y.shape[1:]).mean(1)
