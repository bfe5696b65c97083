"""σ-conditioned UNet with EDM preconditioning (Karras et al. NeurIPS 2022).

``D(y; σ) = c_skip(σ) y + c_out(σ) F(c_in(σ) y; c_noise(σ))`` where ``F`` is a small
DDPM++-style UNet: residual blocks (GroupNorm → FiLM from the σ-embedding → SiLU → conv),
average-pool down-sampling, nearest up-sampling + conv, skip connections by concatenation.
Defaults are sized to train in minutes on a 2-core CPU at 16×16 … 32×32.

Class conditioning (``num_classes > 0``): a learned embedding of the label is added to the
σ-embedding (EDM's ``map_label``); labels go in as ``D(y, σ, cond)`` with ints in
``[0, num_classes)``, and the extra index ``num_classes`` (:attr:`UNet.null_label`;
``null_cond = tensor([num_classes])``; also used when ``cond`` is None) is the "no label"
of classifier-free guidance (Ho & Salimans 2022), trained by dropping labels
(``TrainConfig.label_dropout``).
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import as_sigma, check_positive_float, check_positive_int
from ..errors import InputError
from . import blocks
from .base import MAX_DEPTH, MAX_LEVELS, check_at_most
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
        num_classes: int = 0,
        fused: bool = True,
    ):
        super().__init__()
        self.fused = fused
        widths = [width * 2**level for level in range(levels)]  # e.g. 32, 64, 128

        # σ-embedding: c_noise [B] -> [B, emb_dim] (EDM DDPM++: positional + 2-layer MLP)
        self.embed = nn.Sequential(
            PositionalEmbedding(width + width % 2),
            nn.Linear(width + width % 2, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
        )
        # class embedding [num_classes + 1, emb_dim]; the last row is the null label.
        # Zero at initialisation, so a conditional model starts as an unconditional one.
        self.class_embed = None
        if num_classes:
            self.class_embed = nn.Embedding(num_classes + 1, emb_dim)
            nn.init.zeros_(self.class_embed.weight)
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)

        self.encoder = nn.ModuleList()  # one ModuleList of ResBlocks per level
        c_prev = width
        for c in widths:
            level_blocks = nn.ModuleList()
            for _ in range(blocks_per_level):
                level_blocks.append(ResBlock(c_prev, c, emb_dim, dropout, fused))
                c_prev = c
            self.encoder.append(level_blocks)
        self.pool = nn.AvgPool2d(2)
        self.mid = nn.ModuleList([ResBlock(c_prev, c_prev, emb_dim, dropout, fused)
                                  for _ in range(2)])

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
                level_blocks.append(ResBlock(c_in, c, emb_dim, dropout, fused))
                c_prev = c
            self.decoder.append(level_blocks)

        self.norm_out = nn.GroupNorm(num_groups(width), width)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor,
                labels: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.embed(c_noise)  # [B, E]
        if self.class_embed is not None and labels is not None:
            emb = emb + self.class_embed(labels)  # [B, E]: EDM's map_label
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
        h = blocks.groupnorm_film_silu(h, n.num_groups, n.weight, n.bias, None, None, n.eps,
                                       self.fused)
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
        num_classes: 0 (unconditional) or the number of class labels; ``forward`` then
            takes ``cond`` = class labels (int [B] in ``[0, num_classes]``, ``num_classes``
            = :attr:`null_label` = no label; None = all null).
        fused: run every GroupNorm → FiLM → SiLU chain as the fused op
            ``pydiffgen.ops.groupnorm_film_silu`` (default); False: eager PyTorch (same
            math; recorded in ``.config`` only when False, so older checkpoints match).
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
        num_classes: int = 0,
        fused: bool = True,
    ):
        super().__init__(
            channels=channels,
            width=width,
            levels=levels,
            blocks_per_level=blocks_per_level,
            emb_dim=emb_dim,
            sigma_data=sigma_data,
            dropout=dropout,
            num_classes=num_classes,
            **({} if fused else {"fused": False}),
        )
        if not isinstance(fused, bool):
            raise InputError(f"fused must be True or False, got {fused!r}")
        self.channels = check_positive_int(channels, "channels")
        self.levels = check_at_most(check_positive_int(levels, "levels"), "levels", MAX_LEVELS)
        check_positive_int(width, "width")
        check_at_most(check_positive_int(blocks_per_level, "blocks_per_level"),
                      "blocks_per_level", MAX_DEPTH)
        if emb_dim is not None:
            check_positive_int(emb_dim, "emb_dim")
        if not 0.0 <= dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {dropout!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise InputError(f"num_classes must be an integer >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        self.sigma_data = check_positive_float(sigma_data, "sigma_data")
        self.multiple = 2 ** (levels - 1)
        self.F = UNetBackbone(
            channels, width, levels, blocks_per_level, emb_dim or 4 * width, dropout,
            num_classes, fused,
        )

    @property
    def null_label(self) -> int:
        """The label index meaning "no label" (classifier-free guidance): ``num_classes``."""
        return self.num_classes

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def null_cond(self) -> torch.Tensor | None:
        """``tensor([num_classes])``, the null label as a batch of one; None unconditional."""
        return torch.tensor([self.num_classes]) if self.num_classes else None

    def forward(self, y: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        if not self.num_classes:
            if cond is not None:
                raise InputError("cond (class labels) given to a UNet built with num_classes=0; "
                                 "build it with num_classes=K to condition on labels")
            return super().forward(y, sigma)
        y = self.check_input(y)  # [B, C, H, W]
        sigma = as_sigma(sigma, y.shape[0], device=y.device, dtype=y.dtype)  # [B]
        labels = self.check_labels(cond, y.shape[0], y.device)  # [B]
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, self.sigma_data)
        shape = (-1, 1, 1, 1)
        F_x = self.F(c_in.view(shape) * y, c_noise, labels)  # [B, C, H, W]
        # Karras et al. 2022 (EDM), Eq. 7: D(y; σ, c) = c_skip y + c_out F(c_in y; c_noise, c)
        return c_skip.view(shape) * y + c_out.view(shape) * F_x.to(y.dtype)

    def check_labels(self, class_labels, batch: int, device) -> torch.Tensor:
        """Labels as int64 ``[batch]`` in ``[0, num_classes]``; None → all :attr:`null_label`."""
        if class_labels is None:
            return torch.full((batch,), self.null_label, dtype=torch.long, device=device)
        if isinstance(class_labels, int) and not isinstance(class_labels, bool):
            class_labels = torch.full((batch,), class_labels, dtype=torch.long)
        if (not isinstance(class_labels, torch.Tensor) or class_labels.is_floating_point()
                or class_labels.shape not in ((batch,), (1,), ())):
            got = (f"shape {tuple(class_labels.shape)} dtype {class_labels.dtype}"
                   if isinstance(class_labels, torch.Tensor) else type(class_labels).__name__)
            raise InputError(f"cond: class_labels must be an int tensor of shape [{batch}], "
                             f"got {got}")
        labels = class_labels.to(device=device, dtype=torch.long).expand(batch)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise InputError(f"cond: class_labels must lie in [0, {self.num_classes}] (the last "
                             f"is the null label), got values in [{int(labels.min())}, "
                             f"{int(labels.max())}]")
        return labels

    def check_input(self, y: torch.Tensor) -> torch.Tensor:
        return check_images(y, self.channels, self.multiple)  # [B, C, H, W]
