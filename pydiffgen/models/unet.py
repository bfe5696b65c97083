"""σ-conditioned UNet with EDM preconditioning (Karras et al. NeurIPS 2022).

``D(y; σ) = c_skip(σ) y + c_out(σ) F(c_in(σ) y; c_noise(σ))`` where ``F`` is a small
DDPM++-style UNet: residual blocks (GroupNorm → FiLM from the σ-embedding → SiLU → conv),
average-pool down-sampling, nearest up-sampling + conv, skip connections by concatenation.
Defaults are sized to train in minutes on a 2-core CPU at 16×16 … 32×32.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_positive_float, check_positive_int
from ..errors import InputError
from . import blocks
from .blocks import EDMPrecond, PositionalEmbedding, ResBlock, check_images, num_groups

__all__ = ["UNet", "UNetBackbone"]


class UNetBackbone(nn.Module):
    """The raw network ``F(x [B, C, H, W], c_noise [B]) -> [B, C, H, W]`` of :class:`UNet`.

    Level l (l = 0 … levels−1) runs at ``H / 2^l`` with ``width · 2^l`` channels and
    ``blocks_per_level`` residual blocks on each side; the deepest level doubles as the
    middle (two extra blocks). The output convolution starts at zero, so ``F ≡ 0`` and
    ``D(y; σ) = c_skip y`` at initialisation.
    """

    def __init__(
        self,
        channels: int,
        width: int,
        levels: int,
        blocks_per_level: int,
        emb_dim: int,
        dropout: float,
    ):
        super().__init__()
        widths = [width * 2**level for level in range(levels)]  # e.g. 32, 64, 128

        # σ-embedding: c_noise [B] -> [B, emb_dim] (EDM DDPM++: positional + 2-layer MLP)
        self.embed = nn.Sequential(
            PositionalEmbedding(width + width % 2),
            nn.Linear(width + width % 2, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
        )
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)

        self.encoder = nn.ModuleList()  # one ModuleList of ResBlocks per level
        c_prev = width
        for c in widths:
            level_blocks = nn.ModuleList()
            for _ in range(blocks_per_level):
                level_blocks.append(ResBlock(c_prev, c, emb_dim, dropout))
                c_prev = c
            self.encoder.append(level_blocks)
        self.pool = nn.AvgPool2d(2)
        self.mid = nn.ModuleList([ResBlock(c_prev, c_prev, emb_dim, dropout) for _ in range(2)])

        self.upsample = nn.ModuleList()  # nearest ×2 then conv3×3, for levels L−2 … 0
        self.decoder = nn.ModuleList()
        for level in reversed(range(levels)):
            c = widths[level]
            if level < levels - 1:
                self.upsample.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(c_prev, c_prev, 3, padding=1),
                    )
                )
            level_blocks = nn.ModuleList()
            for i in range(blocks_per_level):
                c_in = c_prev + c if i == 0 else c  # the first block takes the skip too
                level_blocks.append(ResBlock(c_in, c, emb_dim, dropout))
                c_prev = c
            self.decoder.append(level_blocks)

        self.norm_out = nn.GroupNorm(num_groups(width), width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        emb = self.embed(c_noise)  # [B, E]
        h = self.conv_in(x)  # [B, w, H, W]
        skips = []
        for level, level_blocks in enumerate(self.encoder):
            if level > 0:
                h = self.pool(h)  # [B, ·, H/2^l, W/2^l]
            for block in level_blocks:
                h = block(h, emb)  # [B, w·2^l, H/2^l, W/2^l]
            skips.append(h)
        for block in self.mid:
            h = block(h, emb)  # [B, w·2^(L−1), H/2^(L−1), W/2^(L−1)]
        for i, (level_blocks, skip) in enumerate(zip(self.decoder, reversed(skips))):
            if i > 0:
                h = self.upsample[i - 1](h)  # [B, ·, H/2^l, W/2^l]
            h = torch.cat([h, skip], dim=1)
            for block in level_blocks:
                h = block(h, emb)  # [B, w·2^l, H/2^l, W/2^l]
        n = self.norm_out  # looked up on the module so a fused kernel can replace it
        h = blocks.groupnorm_film_silu(h, n.num_groups, n.weight, n.bias, None, None, n.eps)
        return self.conv_out(h)  # [B, C, H, W]


class UNet(EDMPrecond):
    """σ-conditioned UNet denoiser with EDM preconditioning, ``D(y [B, C, H, W], σ)``.

    Args:
        channels: image channels C.
        width: channels at full resolution; level l has ``width · 2^l``.
        levels: resolutions (H, W must be multiples of ``2**(levels−1)``).
        blocks_per_level: residual blocks per level on each side of the UNet.
        emb_dim: σ-embedding size (default ``4 · width``).
        sigma_data: the data standard deviation σ_d of the EDM preconditioning.
        dropout: dropout rate inside the residual blocks.
    """

    name = "unet"

    def __init__(
        self,
        channels: int = 1,
        width: int = 32,
        levels: int = 3,
        blocks_per_level: int = 1,
        emb_dim: int | None = None,
        sigma_data: float = 0.5,
        dropout: float = 0.0,
    ):
        super().__init__(
            channels=channels,
            width=width,
            levels=levels,
            blocks_per_level=blocks_per_level,
            emb_dim=emb_dim,
            sigma_data=sigma_data,
            dropout=dropout,
        )
        self.channels = check_positive_int(channels, "channels")
        self.levels = check_positive_int(levels, "levels")
        check_positive_int(width, "width")
        check_positive_int(blocks_per_level, "blocks_per_level")
        if emb_dim is not None:
            check_positive_int(emb_dim, "emb_dim")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout!r}")
        self.sigma_data = check_positive_float(sigma_data, "sigma_data")
        self.multiple = 2 ** (levels - 1)
        self.F = UNetBackbone(
            channels, width, levels, blocks_per_level, emb_dim or 4 * width, dropout
        )

    def check_input(self, y: torch.Tensor) -> torch.Tensor:
        return check_images(y, self.channels, self.multiple)  # [B, C, H, W]
