"""Adapters: denoisers trained elsewhere, behind pydiffgen's ``D(y, σ, cond)`` interface.

:func:`load_diffusers` reads a saved diffusers pipeline or model folder (safetensors only,
nothing downloaded) as a :class:`DiffusersDenoiser`: ``UNet2DModel`` (optionally
class-conditional), ``UNet2DConditionModel`` (text), ``DiTTransformer2DModel`` /
``Transformer2DModel`` (class labels), under the σ map of its scheduler (DDPM, DDIM,
Euler, DPM-Solver, EDM, Score SDE VE: module ``schedulers``), latent when it has an
``AutoencoderKL``, embedding prompts with its own CLIP text encoder. diffusers is optional
(``pip install "pydiffgen[diffusers]"``).

Modules: ``layout`` (folders, safetensors check), ``schedulers`` (config → σ map or
refusal, σ tables), ``networks`` (how each network takes its condition), ``latent`` (the
autoencoder), ``text`` (prompt embeddings), ``denoiser``, ``loading``.
"""

from .denoiser import DiffusersDenoiser
from .layout import is_diffusers_dir
from .loading import load_diffusers
from .schedulers import EDM, DiscreteVP, VarianceExploding

__all__ = ["EDM", "DiffusersDenoiser", "DiscreteVP", "VarianceExploding", "is_diffusers_dir",
           "load_diffusers"]
