"""Layers shared by the denoisers: bias-free batch norm, EDM preconditioning, σ-embedding,
the GroupNorm → FiLM → SiLU chain and the conditioned residual block.

Conventions: images are ``[B, C, H, W]``, noise levels ``sigma`` are ``[B]`` after
:func:`pydiffgen._checks.as_sigma`, σ-embeddings are ``[B, E]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

from .._checks import as_sigma, check_tensor
from ..errors import InputError
from .base import Denoiser

__all__ = [
    "BFBatchNorm2d",
    "EDMPrecond",
    "PositionalEmbedding",
    "ResBlock",
    "check_images",
    "groupnorm_film_silu",
    "num_groups",
]


# --------------------------------------------------------------------------- validation


def check_images(y, channels: int, multiple: int = 1, name: str = "y") -> torch.Tensor:
    """Check ``y`` is a ``[B, channels, H, W]`` float tensor with H and W divisible by
    ``multiple`` (every down-sampling halves the size). Returns ``y``."""
    y = check_tensor(y, name, ndim=4, finite=False)
    if y.shape[1] != channels:
        raise InputError(
            f"{name} has {y.shape[1]} channels but the model was built for {channels}; "
            f"pass images of shape [B, {channels}, H, W] or build the model with "
            f"channels={y.shape[1]}"
        )
    H, W = y.shape[-2:]
    if H % multiple or W % multiple:
        raise InputError(
            f"{name} has spatial size {H}x{W}, but this model down-samples by {multiple}: "
            f"height and width must be multiples of {multiple} (pad or crop the images, "
            f"or build the model with fewer levels)"
        )
    return y


def backend(fused: bool) -> str | None:
    """The ops' ``backend=`` for a model's ``fused`` flag: False forces the eager PyTorch
    chains (``reference``); True lets the ops choose (``PYDIFFGEN_BACKEND`` can force one)."""
    return None if fused else "reference"


# --------------------------------------------------------------------------- bias-free BN


class BFBatchNorm2d(nn.Module):
    """Bias-free batch normalisation (Mohan et al. 2020; Kadkhodaie et al. 2024).

    ``x / std · gain`` per channel, with NO mean subtraction and NO additive bias, so the
    layer is linear in ``x`` in eval mode (and positively homogeneous up to ``eps`` in
    training mode). ``std`` is the batch standard deviation over ``(B, H, W)`` in training
    (and updates ``running_std`` with ``momentum``), the running estimate in eval mode.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.gain = nn.Parameter(torch.ones(num_features))  # [C]
        self.register_buffer("running_std", torch.ones(num_features))  # [C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, C, H, W]
        if self.training:
            # Mohan et al. 2020, BF-BN: σ_c = sqrt(Var_{B,H,W}[x_c] + ε), no centring of x
            std = torch.sqrt(x.var(dim=(0, 2, 3), unbiased=False) + self.eps)  # [C]
            with torch.no_grad():
                self.running_std.lerp_(std.detach().to(self.running_std.dtype), self.momentum)
        else:
            std = self.running_std.to(x.dtype)
        return x * (self.gain / std).view(1, -1, 1, 1)

    def forward_relu(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(self(x))``; in training mode one op, ``pydiffgen.ops.bf_batchnorm_relu``
        (eval mode is a per-channel scale: nothing to fuse)."""
        if not self.training:
            return nnf.relu(self(x))
        from ..ops.blocks import bf_batchnorm_relu

        y, std = bf_batchnorm_relu(x, self.gain, self.eps)  # [B, C, H, W], [C]
        with torch.no_grad():
            self.running_std.lerp_(std.detach().to(self.running_std.dtype), self.momentum)
        return y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


# --------------------------------------------------------------------------- EDM


class EDMPrecond(Denoiser):
    """Base for σ-conditioned denoisers with EDM preconditioning (Karras et al. 2022).

    ``D(y; σ) = c_skip(σ) y + c_out(σ) F(c_in(σ) y; c_noise(σ))``: subclasses build the raw
    network as ``self.F`` (called ``F(x [B, *feat], c_noise [B]) -> [B, *feat]``), store
    ``self.sigma_data`` and override :meth:`check_input`. Not registered (no ``name``).
    """

    sigma_data: float = 0.5

    def check_input(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        return check_tensor(y, "y", min_ndim=2, finite=False)

    @staticmethod
    def coefficients(sigma: torch.Tensor, sigma_data: float):
        """``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma [B]``, each ``[B]``."""
        # Karras et al. 2022 (EDM), Table 1 / Eq. 7: preconditioning for σ_data
        c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
        c_out = sigma * sigma_data / (sigma**2 + sigma_data**2).sqrt()
        c_in = 1 / (sigma**2 + sigma_data**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:
        y = self.check_input(y)  # [B, *feat]
        sigma = as_sigma(sigma, y.shape[0], device=y.device, dtype=y.dtype)  # [B]
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma, self.sigma_data)
        shape = (-1,) + (1,) * (y.ndim - 1)  # broadcast [B] over the feature dims
        F_x = self.F(c_in.view(shape) * y, c_noise)  # [B, *feat]
        # Karras et al. 2022 (EDM), Eq. 7: D(y; σ) = c_skip y + c_out F(c_in y; c_noise)
        D_x = c_skip.view(shape) * y + c_out.view(shape) * F_x.to(y.dtype)
        return D_x


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding of a scalar (Vaswani et al. 2017; EDM's DDPM++ σ-embedding).

    ``c_noise [B] -> [B, num_channels]`` = ``[cos(f_k c), sin(f_k c)]`` with the fixed
    geometric frequencies ``f_k = (1 / max_positions)^(k / (K - 1))``, k = 0 … K−1,
    K = num_channels / 2. With c_noise = ln(σ)/4 ∈ [−1.6, 1.1] (σ ∈ [0.002, 80]) every
    feature is smooth in σ.
    """

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        if num_channels < 2 or num_channels % 2:
            raise InputError(
                f"PositionalEmbedding needs an even num_channels >= 2, got {num_channels}"
            )
        K = num_channels // 2
        k = torch.arange(K, dtype=torch.float32) / max(K - 1, 1)
        self.register_buffer("freqs", (1.0 / max_positions) ** k, persistent=False)  # [K]

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:  # c_noise: [B]
        x = c_noise.outer(self.freqs.to(c_noise.dtype))  # [B, K]
        return torch.cat([x.cos(), x.sin()], dim=1)  # [B, 2K]


# ------------------------------------------------------------- conditioned UNet blocks


def num_groups(channels: int, max_groups: int = 32) -> int:
    """GroupNorm group count: the largest g ≤ min(32, channels) that divides ``channels``."""
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


def groupnorm_film_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    eps: float = 1e-5,
    fused: bool = True,
) -> torch.Tensor:
    """``SiLU(GN(x) · (1 + scale) + shift)``: the normalise-condition-activate chain.

    x: ``[B, C, H, W]``; weight, bias: ``[C]`` (GroupNorm affine, or None);
    scale, shift: ``[B, C]`` FiLM from the σ-embedding (None = 0). Returns ``[B, C, H, W]``.
    Every conditioned block goes through this one function, the op
    ``pydiffgen.ops.groupnorm_film_silu``: fused unless ``fused`` is False (the eager
    PyTorch chain, its ``reference`` backend).
    """
    from ..ops.blocks import groupnorm_film_silu as op

    return op(x, num_groups, weight, bias, scale, shift, eps, backend=backend(fused))


class ResBlock(nn.Module):
    """σ-conditioned residual block (DDPM++ / EDM style):

    ``x + conv1(drop(GN-FiLM-SiLU(conv0(GN-SiLU(x)), emb)))``, with a 1×1 conv on the skip
    path when the channel count changes. ``conv1`` starts at zero so every block starts
    as the identity (or the skip projection).
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float = 0.0,
                 fused: bool = True):
        super().__init__()
        self.fused = fused  # GroupNorm → FiLM → SiLU as one fused op
        self.norm0 = nn.GroupNorm(num_groups(in_channels), in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.affine = nn.Linear(emb_dim, 2 * out_channels)  # emb -> (scale, shift)
        self.norm1 = nn.GroupNorm(num_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # x: [B, C_in, H, W], emb: [B, E]
        n0, n1 = self.norm0, self.norm1
        h = groupnorm_film_silu(x, n0.num_groups, n0.weight, n0.bias, None, None, n0.eps,
                                self.fused)
        h = self.conv0(h)  # [B, C_out, H, W]
        scale, shift = self.affine(emb).chunk(2, dim=1)  # [B, C_out] each
        h = groupnorm_film_silu(h, n1.num_groups, n1.weight, n1.bias, scale, shift, n1.eps,
                                self.fused)
        h = self.conv1(self.dropout(h))  # [B, C_out, H, W]
        return (x if self.skip is None else self.skip(x)) + h
