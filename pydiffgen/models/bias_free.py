"""Bias-free blind denoisers (Mohan et al. ICLR 2020; Kadkhodaie et al. ICLR 2024).

No additive constant anywhere (convolutions without bias, :class:`BFBatchNorm2d` without
mean subtraction or offset, ReLU, average pooling, transposed convolutions), so in eval
mode the network is piecewise linear and positively homogeneous:
``f(α y) = α f(y)`` for α > 0 and ``f(y) = J(y) y`` with ``J`` the Jacobian of ``f`` at ``y``.
The networks predict the noise; the denoiser is the residual ``f(y) = y − net(y)``.
Both are blind: σ is accepted (and validated when given) but not used.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import as_sigma, check_positive_int
from ..errors import InputError
from .base import MAX_DEPTH, MAX_LEVELS, Denoiser, check_at_most
from .blocks import BFBatchNorm2d, check_images

__all__ = ["BFCNN", "BiasFreeUNet"]


def _conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [_conv3x3(in_channels, out_channels), BFBatchNorm2d(out_channels), nn.ReLU()]


class _Layers(nn.Sequential):
    """``nn.Sequential`` that runs each ``BFBatchNorm2d → nn.ReLU`` pair as one fused op in
    training mode (``BFBatchNorm2d.forward_relu``) when ``fused``. Same modules and
    state-dict keys as a plain Sequential. A ReLU carrying hooks (e.g. one that records or
    freezes activation patterns) or of a subclass is never fused away."""

    fused: bool = True

    def forward(self, x):
        mods = list(self)
        i = 0
        while i < len(mods):
            m = mods[i]
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            if (self.fused and isinstance(m, BFBatchNorm2d) and type(nxt) is nn.ReLU
                    and not (nxt._forward_hooks or nxt._forward_pre_hooks)):
                x = m.forward_relu(x)
                i += 2
            else:
                x = m(x)
                i += 1
        return x


def _set_fused(model: nn.Module, fused) -> None:
    if not isinstance(fused, bool):
        raise InputError(f"fused must be True or False, got {fused!r}")
    for m in model.modules():
        if isinstance(m, _Layers):
            m.fused = fused


class _BlindDenoiser(Denoiser):
    """Shared residual forward of the bias-free models: ``f(y) = y − net(y)``."""

    blind = True
    piecewise_linear = True
    channels: int
    multiple: int = 1  # H and W must be multiples of this

    def forward(self, y: torch.Tensor, sigma=None) -> torch.Tensor:
        y = check_images(y, self.channels, self.multiple)  # [B, C, H, W]
        if sigma is not None:  # blind: checked for the caller's sake, then ignored
            as_sigma(sigma, y.shape[0], device=y.device, dtype=y.dtype)
        # Kadkhodaie et al. 2024, §2: the network predicts the noise, f(y) = y − net(y)
        return y - self.residual(y)

    def residual(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError


class BiasFreeUNet(_BlindDenoiser):
    """Bias-free UNet of Kadkhodaie, Guth, Simoncelli & Mallat (ICLR 2024).

    ``levels`` encoder levels with ``width · 2^l`` channels (l = 0 … levels−1), each two
    conv3×3 layers (BF-BN + ReLU) then 2×2 average pooling; a middle block of two
    conv3×3 layers with ``2 · width · 2^(levels−1)`` channels; decoder levels that
    up-sample with a 2×2 stride-2 transposed convolution, concatenate the encoder's
    skip and apply two conv3×3 layers. The first layer has no BF-BN, the last none and no
    ReLU. Parameter counts at width 64: 0.37 / 1.8 / 7.7 / 31 M for 1 / 2 / 3 / 4 levels,
    as in the paper. Input ``[B, channels, H, W]`` with H, W multiples of ``2**levels``
    (the middle block runs at ``H / 2**levels``). ``fused`` (default True) runs each
    training-mode BF-BN → ReLU as one fused op (``pydiffgen.ops.bf_batchnorm_relu``);
    recorded in ``.config`` only when False.
    """

    name = "bf_unet"

    def __init__(self, channels: int = 1, levels: int = 3, width: int = 64, fused: bool = True):
        super().__init__(channels=channels, levels=levels, width=width,
                         **({} if fused else {"fused": False}))
        self.channels = check_positive_int(channels, "channels")
        self.levels = check_at_most(check_positive_int(levels, "levels"), "levels", MAX_LEVELS)
        self.width = check_positive_int(width, "width")
        self.multiple = 2**levels
        widths = [width * 2**level for level in range(levels)]  # e.g. 64, 128, 256

        self.encoder = nn.ModuleList()
        c_prev = channels
        for level, c in enumerate(widths):
            first = [_conv3x3(c_prev, c), nn.ReLU()] if level == 0 else _conv_bn_relu(c_prev, c)
            self.encoder.append(_Layers(*first, *_conv_bn_relu(c, c)))
            c_prev = c
        self.pool = nn.AvgPool2d(2)
        c_mid = 2 * widths[-1]  # e.g. 512
        self.mid = _Layers(*_conv_bn_relu(c_prev, c_mid), *_conv_bn_relu(c_mid, c_mid))

        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        c_prev = c_mid
        for level, c in reversed(list(enumerate(widths))):
            self.upsample.append(nn.ConvTranspose2d(c_prev, c, 2, stride=2, bias=False))
            last = [_conv3x3(c, channels)] if level == 0 else _conv_bn_relu(c, c)
            self.decoder.append(_Layers(*_conv_bn_relu(2 * c, c), *last))
            c_prev = c
        _set_fused(self, fused)

    def residual(self, y: torch.Tensor) -> torch.Tensor:
        x = y  # [B, C, H, W]
        skips = []
        for block in self.encoder:
            x = block(x)  # [B, w·2^l, H/2^l, W/2^l]
            skips.append(x)
            x = self.pool(x)
        x = self.mid(x)  # [B, 2·w·2^(L−1), H/2^L, W/2^L]
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips)):
            x = block(torch.cat([up(x), skip], dim=1))  # [B, w·2^l, H/2^l, W/2^l]
        return x  # [B, C, H, W]: the predicted noise


class BFCNN(_BlindDenoiser):
    """Bias-free DnCNN (Mohan et al. ICLR 2020): ``conv → [conv-BFBN-ReLU]×(depth−2) → conv``.

    All 3×3 convolutions, ``width`` channels, ReLU after the first; predicts the noise.
    ≈0.7 M parameters at the defaults (21 layers × 64 channels). Any spatial size.
    ``fused``: as for :class:`BiasFreeUNet`.
    """

    name = "bf_cnn"

    def __init__(self, channels: int = 1, depth: int = 21, width: int = 64, fused: bool = True):
        super().__init__(channels=channels, depth=depth, width=width,
                         **({} if fused else {"fused": False}))
        self.channels = check_positive_int(channels, "channels")
        self.depth = check_at_most(check_positive_int(depth, "depth", minimum=2), "depth",
                                   MAX_DEPTH)
        self.width = check_positive_int(width, "width")
        layers: list[nn.Module] = [_conv3x3(channels, width), nn.ReLU()]
        for _ in range(depth - 2):
            layers += _conv_bn_relu(width, width)
        layers.append(_conv3x3(width, channels))
        self.net = _Layers(*layers)
        _set_fused(self, fused)

    def residual(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)  # [B, C, H, W]: the predicted noise
