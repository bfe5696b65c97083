"""pydiffgen.models: denoisers ``D(y, sigma)``, analytic or trained.

- :class:`BiasFreeUNet` (``"bf_unet"``) and :class:`BFCNN` (``"bf_cnn"``): blind,
  bias-free, positively homogeneous (Kadkhodaie et al. 2024; Mohan et al. 2020).
- :class:`UNet` (``"unet"``) and :class:`MLP` (``"mlp"``): σ-conditioned with EDM
  preconditioning (Karras et al. 2022).

``build(name, **kwargs)`` makes any of them; ``build(**model.config)`` rebuilds one.
"""

from .base import MODELS, Denoiser, build
from .bias_free import BFCNN, BiasFreeUNet
from .blocks import (
    BFBatchNorm2d,
    EDMPrecond,
    PositionalEmbedding,
    ResBlock,
    groupnorm_film_silu,
    num_groups,
)
from .mlp import MLP
from .unet import UNet

__all__ = [
    "BFBatchNorm2d",
    "BFCNN",
    "BiasFreeUNet",
    "Denoiser",
    "EDMPrecond",
    "MLP",
    "MODELS",
    "PositionalEmbedding",
    "ResBlock",
    "UNet",
    "build",
    "groupnorm_film_silu",
    "num_groups",
]
