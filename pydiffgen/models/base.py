"""The denoiser interface every model, analytic or trained, follows.

A denoiser maps noisy images and their noise levels to clean estimates:
``D(y [B, *F], sigma [B]) -> [B, *F]`` (σ may also be a float). Models remember the
keyword arguments they were built with (``.config``) so checkpoints can rebuild them.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError

MODELS: dict[str, type[Denoiser]] = {}


class Denoiser(nn.Module):
    """Base class: subclasses set ``name`` and call ``super().__init__(**their_kwargs)``."""

    name: ClassVar[str] = ""
    blind: ClassVar[bool] = False  # True: σ is accepted and ignored (Kadkhodaie et al.)
    # True: in eval mode the forward adds no constant and its only nonlinearities are
    # nn.ReLU modules, so J(y) is the network with y's ReLU masks frozen
    # (models.piecewise.frozen_relus; analysis.jacobian(method="frozen"))
    piecewise_linear: ClassVar[bool] = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            MODELS[cls.name] = cls

    def __init__(self, **config):
        super().__init__()
        self.config = {"name": self.name, **config}

    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def build(name: str, **kwargs) -> Denoiser:
    """Build a registered model by name, e.g. ``build("bf_unet", width=32)``."""
    from . import bias_free, mlp, unet  # noqa: F401 - registers the models

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad arguments for model {name!r}: {err}") from None
