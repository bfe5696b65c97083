"""The Gaussian denoiser of a training set (Li, Dai & Qu, NeurIPS 2024, §3).

For a training set Y = {y_i} (i = 1..N, d pixels) with empirical mean μ and covariance
Σ = (1/N) Σ_i (y_i − μ)(y_i − μ)ᵀ = U Λ Uᵀ, the optimal denoiser of N(μ, Σ) is

    D_G(y; σ) = μ + U diag(λ / (λ + σ²)) Uᵀ (y − μ)                          (Li et al. Eq. 5)

(the Wiener filter: the best *affine* denoiser of any distribution with that mean and
covariance). Its probability-flow ODE dx/dσ = (x − D_G(x; σ))/σ has the closed form

    x_t = μ + Σ_i sqrt((σ_t² + λ_i) / (σ_T² + λ_i)) ⟨u_i, x_T − μ⟩ u_i      (Li et al. Eq. 7)

Numerics: the mean and the covariance are accumulated in float64 over chunks of
``chunk_size`` images (two passes, the mean first, so no large cancellation), never as a
float64 copy of the whole data set; the eigendecomposition runs in float64
(``torch.linalg.eigh``).

Rank deficiency: when N ≤ d, Σ has rank ≤ N − 1. Eigenvalues below
``rtol · λ_max`` are set to exactly 0 (round-off makes them ±1e-17·λ_max otherwise), so
as σ → 0, D_G tends to μ + P(y − μ) with P the orthogonal projection on the span of the
centred training images — not to the identity. Training images are fixed points of
that limit; components orthogonal to the span are removed at every σ.
"""

from __future__ import annotations

import math

import torch

from .._checks import as_sigma, check_positive_int, check_tensor
from ..errors import InputError
from ..models.base import Denoiser

__all__ = ["GaussianDenoiser", "gaussian_moments"]


def gaussian_moments(train, *, chunk_size: int = 1024,
                     block: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Empirical mean ``[d]`` and covariance ``[d, d]`` (1/N normalisation), float64.

    ``train`` [N, *F] is read in chunks of ``chunk_size`` images; peak extra memory is
    one float64 chunk plus the d×d accumulator. Σ is symmetric, so only its upper
    block-triangle is accumulated (block-rows of ``block`` columns: ≈ half the flops of
    a full Xcᵀ Xc, like BLAS syrk) and mirrored at the end.
    """
    # finiteness is checked on the float64 sums below: a full-size isfinite() would cost
    # more memory than the whole fit
    train = check_tensor(train, "train", min_ndim=2, finite=False)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    block = check_positive_int(block, "block")
    n = train.shape[0]
    flat = train.reshape(n, -1)  # [N, d] (a view when train is contiguous)
    d = flat.shape[1]
    mean = torch.zeros(d, dtype=torch.float64, device=train.device)
    for s in range(0, n, chunk_size):
        mean += flat[s : s + chunk_size].to(torch.float64).sum(0)
    mean /= n
    if not bool(torch.isfinite(mean).all()):  # any NaN/Inf pixel makes its column's sum so
        raise InputError("train contains NaN or Inf values")
    cov = torch.zeros(d, d, dtype=torch.float64, device=train.device)
    for s in range(0, n, chunk_size):
        xc = flat[s : s + chunk_size].to(torch.float64) - mean  # [b, d]
        for i0 in range(0, d, block):
            i1 = min(i0 + block, d)
            # Σ[i0:i1, i0:] += Xc[:, i0:i1]ᵀ Xc[:, i0:] (upper block-triangle only)
            cov[i0:i1, i0:].addmm_(xc[:, i0:i1].T, xc[:, i0:])
    for i0 in range(0, d, block):  # mirror: lower block-triangle = upperᵀ
        i1 = min(i0 + block, d)
        cov[i1:, i0:i1] = cov[i0:i1, i1:].T
    cov /= n
    return mean, cov


class GaussianDenoiser(Denoiser):
    """D_G(y; σ) = μ + U diag(λ/(λ+σ²)) Uᵀ(y − μ) of a Gaussian N(μ, U Λ Uᵀ).

    Build it with :meth:`fit` (from training images) or :meth:`from_moments` (from a
    known mean and covariance). ``forward(y [B, *F], sigma float|[B])`` evaluates the
    whole batch with per-sample σ in one pair of matrix products, in float64, and returns
    ``y``'s dtype.

    Attributes (buffers, float64): ``mean`` [d], ``eigenvalues`` [k] (descending, ≥ 0),
    ``eigenvectors`` [d, k]; ``shape`` is the image shape ``F``. k = d unless ``rank``
    truncated it; the discarded directions count as λ = 0 everywhere (D_G removes them,
    the ODE shrinks them by σ_t/σ_T).
    """

    def __init__(self, mean: torch.Tensor, eigenvalues: torch.Tensor,
                 eigenvectors: torch.Tensor, shape=None):
        super().__init__()
        mean = check_tensor(mean, "mean", ndim=1)
        eigenvalues = check_tensor(eigenvalues, "eigenvalues", ndim=1)
        eigenvectors = check_tensor(eigenvectors, "eigenvectors", ndim=2)
        d = mean.shape[0]
        if eigenvectors.shape[0] != d or eigenvectors.shape[1] != eigenvalues.shape[0]:
            raise InputError(
                f"eigenvectors must have shape [d={d}, k={eigenvalues.shape[0]}], "
                f"got {tuple(eigenvectors.shape)}"
            )
        if bool((eigenvalues < 0).any()):
            raise InputError("eigenvalues must be >= 0 (a covariance is positive semidefinite)")
        shape = (d,) if shape is None else tuple(int(s) for s in shape)
        if math.prod(shape) != d:
            raise InputError(f"shape {shape} does not hold d={d} values")
        self.shape = shape
        self.register_buffer("mean", mean.to(torch.float64))
        self.register_buffer("eigenvalues", eigenvalues.to(torch.float64))
        self.register_buffer("eigenvectors", eigenvectors.to(torch.float64))

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, train, *, rank: int | None = None, rtol: float = 1e-10,
            chunk_size: int = 1024) -> GaussianDenoiser:
        """Fit μ, Σ = (1/N) Σ (y_i − μ)(y_i − μ)ᵀ and Σ = U Λ Uᵀ from ``train`` [N, *F].

        rank:  keep only the ``rank`` largest eigenvalues (None: all d).
        rtol:  eigenvalues below ``rtol · λ_max`` are set to 0 (rank deficiency, N ≤ d).
        chunk_size: images per float64 accumulation step (memory ≈ chunk_size·d·8 bytes
               plus the d×d covariance and eigenvectors).
        """
        train = check_tensor(train, "train", min_ndim=2, finite=False)  # checked in moments
        if train.shape[0] < 1:
            raise InputError("train needs at least one image")
        mean, cov = gaussian_moments(train, chunk_size=chunk_size)
        return cls.from_moments(mean, cov, shape=tuple(train.shape[1:]), rank=rank, rtol=rtol)

    @classmethod
    def from_moments(cls, mean, cov, *, shape=None, rank: int | None = None,
                     rtol: float = 1e-10) -> GaussianDenoiser:
        """From a mean [d] and a covariance [d, d] (e.g. ``pydiffgen.data.gaussian_params``)."""
        mean = check_tensor(mean, "mean", ndim=1)
        cov = check_tensor(cov, "cov", ndim=2)
        d = mean.shape[0]
        if tuple(cov.shape) != (d, d):
            raise InputError(
                f"cov must have shape [{d}, {d}] to match mean, got {tuple(cov.shape)}")
        if rank is not None:
            rank = check_positive_int(rank, "rank")
            if rank > d:
                raise InputError(f"rank must be <= d={d}, got {rank}")
        if not (isinstance(rtol, (int, float)) and 0 <= rtol < 1):
            raise InputError(f"rtol must be a number in [0, 1), got {rtol!r}")
        cov = cov.to(torch.float64)
        # ascending; LAPACK reads one triangle, so no symmetrised copy
        lam, U = torch.linalg.eigh(cov)
        del cov
        lam, U = lam.flip(0), U.flip(1)  # descending: principal directions first
        lam_max = float(lam[0].clamp_min(0))
        lam = torch.where(lam > rtol * lam_max, lam, torch.zeros_like(lam))
        if rank is not None:
            lam, U = lam[:rank], U[:, :rank]
        return cls(mean.to(torch.float64), lam, U, shape=shape)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    @property
    def rank(self) -> int:
        """Number of strictly positive eigenvalues kept."""
        return int((self.eigenvalues > 0).sum())

    @property
    def covariance(self) -> torch.Tensor:
        """Σ = U Λ Uᵀ [d, d] (float64; the truncated one when ``rank`` was given)."""
        U = self.eigenvectors
        return (U * self.eigenvalues) @ U.T

    def weight(self, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine map of D_G at one σ: ``(W [d, d], b [d])`` with D_G(y) = W y + b.

        W = U diag(λ/(λ+σ²)) Uᵀ, b = (I − W) μ (float64).
        """
        s2 = as_sigma(sigma, 1, dtype=torch.float64)[0].item() ** 2
        U = self.eigenvectors
        W = (U * (self.eigenvalues / (self.eigenvalues + s2))) @ U.T
        return W, self.mean - W @ self.mean

    # ------------------------------------------------------------------ denoising
    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """D_G(y; σ) for ``y`` [B, *F] (or [B, d]) and σ a float or ``[B]``."""
        y = check_tensor(y, "y", min_ndim=1, finite=False)
        B = y.shape[0]
        flat = y.reshape(B, -1)
        if flat.shape[1] != self.dim:
            raise InputError(
                f"y must hold d={self.dim} values per image, got shape {tuple(y.shape)}")
        s = as_sigma(sigma, B, device=y.device, dtype=torch.float64)  # [B]
        lam, U = self.eigenvalues, self.eigenvectors
        # Li et al. Eq. 5: coefficients in the eigenbasis, shrunk by λ/(λ+σ²) per sample
        c = (flat.to(torch.float64) - self.mean) @ U  # [B, k]
        shrink = lam / (lam + s[:, None] ** 2)  # [B, k]
        out = self.mean + (c * shrink) @ U.T  # [B, d]
        return out.to(y.dtype).reshape(y.shape)

    # ------------------------------------------------------------------ PF-ODE
    def ode(self, x_T: torch.Tensor, sigma_T, sigma_t) -> torch.Tensor:
        """Closed-form PF-ODE solution from σ_T to σ_t (Li et al. Eq. 7); ``x_T``'s shape.

        x_t = μ + Σ_i sqrt((σ_t² + λ_i)/(σ_T² + λ_i)) ⟨u_i, x_T − μ⟩ u_i, with the
        directions outside U (λ = 0) scaled by σ_t/σ_T. ``sigma_t`` = 0 gives the sample
        the deterministic sampler converges to. σ's are floats or ``[B]`` tensors.
        """
        x_T = check_tensor(x_T, "x_T", min_ndim=1)
        B = x_T.shape[0]
        flat = x_T.reshape(B, -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise InputError(f"x_T must hold d={self.dim} values per image, got {tuple(x_T.shape)}")
        sT = as_sigma(sigma_T, B, device=x_T.device, dtype=torch.float64, name="sigma_T")
        if isinstance(sigma_t, (int, float)) and not isinstance(sigma_t, bool) and sigma_t == 0:
            st = torch.zeros(B, dtype=torch.float64, device=x_T.device)
        else:
            st = as_sigma(sigma_t, B, device=x_T.device, dtype=torch.float64, name="sigma_t")
        lam, U = self.eigenvalues, self.eigenvectors
        r = flat - self.mean  # [B, d]
        c = r @ U  # [B, k]
        scale = torch.sqrt((st[:, None] ** 2 + lam) / (sT[:, None] ** 2 + lam))  # [B, k]
        rest = r - c @ U.T  # component outside span(U): λ = 0
        out = self.mean + (c * scale) @ U.T + (st / sT)[:, None] * rest
        return out.to(x_T.dtype).reshape(x_T.shape)

    def sample(self, n: int, *, sigma_max: float = 80.0, seed: int = 0,
               batch_size: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``n`` samples of the Gaussian model's deterministic PF-ODE, ``[n, *shape]``.

        x_T = σ_max·z with z drawn exactly as ``pydiffgen.diffusion.sampling.sample(...,
        method="heun", seed=seed, batch_size=batch_size)`` draws it (float32, generator
        ``seed + b`` for batch b), then Eq. 7 to σ = 0: the image an exact ODE solver
        reaches from the same initial noise.
        """
        n = check_positive_int(n, "n")
        batch_size = check_positive_int(batch_size, "batch_size")
        sigma_max = as_sigma(sigma_max, 1, dtype=torch.float64, name="sigma_max")[0].item()
        dev = self.mean.device
        outs = []
        for b, start in enumerate(range(0, n, batch_size)):
            gen = torch.Generator(device=dev).manual_seed(seed + b)
            nb = min(batch_size, n - start)
            z = torch.randn((nb, *self.shape), generator=gen, dtype=torch.float32, device=dev)
            outs.append(self.ode(sigma_max * z.to(torch.float64), sigma_max, 0))
        return torch.cat(outs).to(dtype)

    def extra_repr(self) -> str:
        return f"d={self.dim}, rank={self.rank}, shape={self.shape}"
