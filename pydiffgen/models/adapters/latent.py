"""A latent model's autoencoder: pixels ↔ the latents its denoiser works on.

A latent diffusion model (Rombach et al. 2022) denoises z = s·(E(x) − b), with E the
``AutoencoderKL`` encoder's posterior mean, s its config's ``scaling_factor`` and b its
``shift_factor`` (0 where absent); pixels come back as x = Dec(z/s + b). The encoder's mean
(not a draw from its posterior) makes ``encode`` deterministic, as pipelines do when they
encode an image to compare or invert it.
"""

from __future__ import annotations

import torch
from torch import nn


class LatentCodec(nn.Module):
    """``encode(x [B, C, H, W] in [−1, 1]) -> z [B, c, H/f, W/f]`` and ``decode`` back."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(vae.config.get("shift_factor") or 0.0)
        # every down block but the last halves the resolution
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)

    def pixel_shape(self, latent_shape) -> list[int]:
        """[C, H, W] of the images whose latents have shape ``latent_shape`` [c, h, w]."""
        c, h, w = latent_shape
        return [int(self.vae.config.in_channels), h * self.factor, w * self.factor]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        mean = self.vae.encode(x.to(dtype)).latent_dist.mean
        return ((mean - self.shift_factor) * self.scaling_factor).to(x.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        dtype = next(self.vae.parameters()).dtype
        x = self.vae.decode((z / self.scaling_factor + self.shift_factor).to(dtype)).sample
        return x.to(z.dtype)
