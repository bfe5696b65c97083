"""Denoising score-matching losses (variance-exploding: y = x + σ·n).

Both losses are a (weighted) mean squared error of the denoiser output D(y, σ) against
the clean image x, averaged over pixels and the batch:

- ``blind`` (Kadkhodaie et al., ICLR 2024, arXiv 2310.02557, App. A; also Mohan et al.
  2020): the paper trains the network to predict the noise, loss ‖net(y) − σ·n‖², with
  the denoiser f(y) = y − net(y). Since net(y) − σ·n = (y − f(y)) − (y − x) = x − f(y),
  that is exactly ‖f(y) − x‖², the loss used here (averaged over pixels rather than
  summed: a constant factor that Adam's updates do not see).
- ``edm`` (Karras et al., NeurIPS 2022, Eq. 2 with Table 1's weighting):
  λ(σ)·‖D(y, σ) − x‖² with λ(σ) = (σ² + σ_data²) / (σ·σ_data)², which makes the
  effective training target of the preconditioned network F have unit variance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["edm_weight", "denoising_loss", "blind_loss", "edm_loss"]


def edm_weight(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """λ(σ) = (σ² + σ_data²) / (σ·σ_data)², Karras et al. 2022, Table 1 ("loss weighting")."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def denoising_loss(
    denoiser: Callable,
    x: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over the batch of weight(σ)·mean_pixels((D(x + σn, σ) − x)²); a 0-d float32 tensor.

    x, noise: [B, *F]; sigma, weight: [B]. The denoiser output is cast to float32 before
    the error is taken, so the loss stays float32 under bf16 autocast.
    """
    s = sigma.reshape(-1, *([1] * (x.ndim - 1)))  # [B, 1, ...]
    y = x + s * noise  # [B, *F]
    D_y = denoiser(y, sigma)
    per_sample = (D_y.float() - x.float()).square().flatten(1).mean(1)  # [B]
    if weight is not None:
        per_sample = weight * per_sample
    return per_sample.mean()


def blind_loss(denoiser, x, sigma, noise) -> torch.Tensor:
    """Kadkhodaie et al. 2024 (App. A): ‖f(y) − x‖² ≡ ‖net(y) − σn‖² (see module docstring)."""
    return denoising_loss(denoiser, x, sigma, noise)


def edm_loss(denoiser, x, sigma, noise, sigma_data: float = 0.5) -> torch.Tensor:
    """Karras et al. 2022, Eq. 2 with λ(σ) = (σ² + σ_data²)/(σ·σ_data)²."""
    return denoising_loss(denoiser, x, sigma, noise, edm_weight(sigma, sigma_data))
