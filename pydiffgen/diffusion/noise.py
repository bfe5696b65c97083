"""Noise levels: the training distributions of σ and the sampling schedules.

Variance-exploding convention throughout: y = x + σ·n, n ~ N(0, I), images in [-1, 1].

- ``sigma_kadkhodaie``: Kadkhodaie et al. (ICLR 2024, arXiv 2310.02557, App. A)
  draw σ = U² with U ~ Uniform(0, 1) for images in [0, 1]. Our images span [-1, 1], an
  interval twice as wide, so the same noise-to-signal ratios need σ twice as large: the
  default ``sigma_max`` is 2 (σ = U²·sigma_max). Pass ``sigma_max=1`` for [0, 1] data.
- ``sigma_edm``: Karras et al. (EDM, NeurIPS 2022, Table 1): ln σ ~ N(P_mean, P_std²)
  with P_mean = -1.2, P_std = 1.2.
- ``sigma_log_uniform``: ln σ ~ Uniform(ln sigma_min, ln sigma_max), the same density on
  every octave of a chosen range (for analyses that read the denoiser at σ in a known
  range, e.g. MSE/σ² on the disk and ray manifolds of Kadkhodaie et al.).
- ``karras_sigmas``: the EDM sampling schedule (Karras et al. 2022, Eq. 5) followed by
  σ_N = 0.
"""

from __future__ import annotations

import math

import torch

from .._checks import check_positive_float, check_positive_int
from ..errors import InputError

__all__ = ["sigma_kadkhodaie", "sigma_edm", "sigma_log_uniform", "karras_sigmas"]


def sigma_kadkhodaie(
    n: int,
    *,
    sigma_max: float = 2.0,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """σ = U²·sigma_max with U ~ Uniform(0, 1]: ``[n]`` float32, every σ > 0.

    Kadkhodaie et al. 2024 (App. A): σ = U² for [0, 1] images; sigma_max = 2 for our
    [-1, 1] images (see the module docstring). U is taken in (0, 1] rather than [0, 1)
    so σ is never exactly 0 (σ-conditioned models take log σ).
    """
    n = check_positive_int(n, "n")
    sigma_max = check_positive_float(sigma_max, "sigma_max")
    device = _device(device, generator)
    u = 1.0 - torch.rand(n, generator=generator, device=device)  # (0, 1]
    return u.square() * sigma_max  # [n]


def sigma_edm(
    n: int,
    *,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Log-normal σ of EDM training: ``[n]`` float32.

    Karras et al. 2022 (Table 1, "training"): ln σ ~ N(P_mean, P_std²).
    """
    n = check_positive_int(n, "n")
    P_std = check_positive_float(P_std, "P_std")
    device = _device(device, generator)
    rnd_normal = torch.randn(n, generator=generator, device=device)
    return (rnd_normal * P_std + float(P_mean)).exp()  # [n]


def sigma_log_uniform(
    n: int,
    *,
    sigma_min: float = 0.02,
    sigma_max: float = 2.0,
    generator: torch.Generator | None = None,
    device=None,
) -> torch.Tensor:
    """Log-uniform σ: ln σ ~ Uniform(ln sigma_min, ln sigma_max), ``[n]`` float32.

    Every octave of the range is drawn equally often, so small σ (rare under
    σ = U²·sigma_max: P(σ < 0.1) ≈ 0.22 for sigma_max = 2) are seen as often as large.
    """
    n = check_positive_int(n, "n")
    sigma_min = check_positive_float(sigma_min, "sigma_min")
    sigma_max = check_positive_float(sigma_max, "sigma_max")
    if sigma_min >= sigma_max:
        raise InputError(f"sigma_min ({sigma_min}) must be below sigma_max ({sigma_max})")
    device = _device(device, generator)
    u = torch.rand(n, generator=generator, device=device)  # [0, 1)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return (lo + u * (hi - lo)).exp()  # [n]


def karras_sigmas(
    steps: int = 18,
    *,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device=None,
    dtype=torch.float64,
) -> torch.Tensor:
    """The EDM sampling schedule: ``[steps + 1]`` decreasing σ from sigma_max to sigma_min, then 0.

    Karras et al. 2022, Eq. 5:
    σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i < N, and σ_N = 0.
    Computed in float64 by default (as NVlabs/edm does) so the endpoints are exact.
    """
    steps = check_positive_int(steps, "steps")
    sigma_min = check_positive_float(sigma_min, "sigma_min")
    sigma_max = check_positive_float(sigma_max, "sigma_max")
    rho = check_positive_float(rho, "rho")
    if sigma_min > sigma_max:
        raise InputError(f"sigma_min ({sigma_min}) must not exceed sigma_max ({sigma_max})")
    if steps == 1:
        t = torch.tensor([sigma_max], dtype=torch.float64)
    else:
        i = torch.arange(steps, dtype=torch.float64)
        # Karras et al. 2022, Eq. 5
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        t = (hi + i / (steps - 1) * (lo - hi)) ** rho
        t[0], t[-1] = sigma_max, sigma_min  # exact endpoints despite the ρ-th power round trip
    t = torch.cat([t, torch.zeros(1, dtype=torch.float64)])  # σ_N = 0
    return t.to(device=device, dtype=dtype)


def _device(device, generator):
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")
