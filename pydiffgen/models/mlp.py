"""σ-conditioned MLP denoiser for low-dimensional toy data (e.g. the 2-D circle of
Kaiser & Kollmann 2026), with EDM preconditioning (Karras et al. 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as nnf
from torch import nn

from .._checks import check_positive_float, check_positive_int, check_tensor
from ..errors import InputError
from .base import MAX_DEPTH, check_at_most
from .blocks import EDMPrecond, PositionalEmbedding

__all__ = ["MLP", "MLPBackbone"]


class MLPBackbone(nn.Module):
    """``F(x [B, dim], c_noise [B]) -> [B, dim]``: ``depth`` hidden layers of ``hidden``
    units, each ``h ← SiLU(W h + b + A e)`` with the σ-embedding ``e`` added per layer."""

    def __init__(self, dim: int, hidden: int, depth: int):
        super().__init__()
        self.embed = nn.Sequential(
            PositionalEmbedding(hidden + hidden % 2),
            nn.Linear(hidden + hidden % 2, hidden),
            nn.SiLU(),
        )
        self.inp = nn.Linear(dim, hidden)
        self.layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.emb_layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(depth)])
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        e = self.embed(c_noise)  # [B, hidden]
        h = self.inp(x)  # [B, hidden]
        for layer, emb_layer in zip(self.layers, self.emb_layers):
            h = nnf.silu(layer(h) + emb_layer(e))  # [B, hidden]
        return self.out(h)  # [B, dim]


class MLP(EDMPrecond):
    """σ-conditioned MLP denoiser ``D(y [B, dim], σ) -> [B, dim]`` with EDM preconditioning.

    Args:
        dim: data dimension.
        hidden: hidden units per layer.
        depth: number of hidden (hidden → hidden) layers.
        sigma_data: σ_d of the EDM preconditioning.
    """

    name = "mlp"

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 4, sigma_data: float = 0.5):
        super().__init__(dim=dim, hidden=hidden, depth=depth, sigma_data=sigma_data)
        self.dim = check_positive_int(dim, "dim")
        check_positive_int(hidden, "hidden")
        check_at_most(check_positive_int(depth, "depth"), "depth", MAX_DEPTH)
        self.sigma_data = check_positive_float(sigma_data, "sigma_data")
        self.F = MLPBackbone(dim, hidden, depth)

    def check_input(self, y: torch.Tensor) -> torch.Tensor:
        y = check_tensor(y, "y", ndim=2, finite=False)  # [B, dim]
        if y.shape[1] != self.dim:
            raise InputError(
                f"y has {y.shape[1]} features but the MLP was built for dim={self.dim}; "
                f"pass points of shape [B, {self.dim}]"
            )
        return y
