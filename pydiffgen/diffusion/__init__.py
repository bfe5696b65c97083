"""pydiffgen.diffusion: noise-level distributions, denoising losses and samplers.

- ``noise``:    σ distributions for training (Kadkhodaie U², EDM log-normal) and the
                Karras sampling schedule.
- ``losses``:   blind (Kadkhodaie) and λ(σ)-weighted (EDM) denoising score matching.
- ``sampling``: ``sample(denoiser, n, shape, method)`` with Kadkhodaie's Algorithm 1,
                EDM Euler / Heun and DDPM ancestral sampling; ``cond=``, ``guidance=``,
                ``x_init=``, ``sigmas=``.
- ``guidance``: conditions (``expand_cond``, ``slice_cond``) and classifier-free
                guidance (``guided(denoiser, cond, w)``, a plain ``D(y, σ)``).
"""

from .guidance import Guided, expand_cond, guided, guided_call, slice_cond, take_cond
from .losses import blind_loss, denoising_loss, edm_loss, edm_weight
from .noise import karras_sigmas, sigma_edm, sigma_kadkhodaie, sigma_log_uniform
from .sampling import (
    METHODS,
    Trajectory,
    ddpm_ancestral,
    edm_euler,
    edm_heun,
    kadkhodaie_ascent,
    sample,
)

__all__ = [
    "Guided",
    "METHODS",
    "Trajectory",
    "blind_loss",
    "ddpm_ancestral",
    "denoising_loss",
    "edm_euler",
    "edm_heun",
    "edm_loss",
    "edm_weight",
    "expand_cond",
    "guided",
    "guided_call",
    "kadkhodaie_ascent",
    "karras_sigmas",
    "sample",
    "sigma_edm",
    "sigma_kadkhodaie",
    "sigma_log_uniform",
    "slice_cond",
    "take_cond",
]
