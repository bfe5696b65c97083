"""The denoiser interface every model, analytic or trained, follows.

A denoiser maps noisy images and their noise levels to clean estimates:
``D(y [B, *F], sigma [B], cond=None) -> [B, *F]`` (σ may also be a float). ``cond`` is
the condition of a conditional model: class labels int64 ``[B]``, text embeddings
``[B, L, E]`` or a dict of such tensors; ``null_cond`` is its "no condition" (batch one),
used by classifier-free guidance (``pydiffgen.diffusion.guidance``). Models remember the
keyword arguments they were built with (``.config``) so checkpoints can rebuild them.
"""

from __future__ import annotations

import inspect
from typing import ClassVar

import torch
from torch import nn

from ..errors import ConfigError, InputError

MODELS: dict[str, type[Denoiser]] = {}

# Stated limits on architectures, checked before anything is allocated (a tampered
# model.json must not ask for tens of GB): 2**28 parameters is 1 GiB as float32 (training
# holds about four copies: weights, EMA, two Adam moments); 12 levels halve a 4096-pixel
# image to 2; 1000 layers is deeper than any denoiser studied here.
MAX_PARAMETERS = 2**28
MAX_LEVELS = 12
MAX_DEPTH = 1000


def check_at_most(value: int, name: str, limit: int) -> int:
    """ConfigError unless ``value <= limit`` (a model argument within its stated limit)."""
    if value > limit:
        raise ConfigError(f"{name}={value} is above the limit of {limit} for a model here")
    return value


class Denoiser(nn.Module):
    """Base class: subclasses set ``name`` and call ``super().__init__(**their_kwargs)``.

    ``conditional``: the model takes ``cond`` (then ``null_cond`` is its "no condition",
    a batch of one); ``latent``: it denoises latents (``encode`` / ``decode`` map pixels
    to them and back). A subclass whose ``forward(y, sigma)`` has no ``cond`` is
    unconditional: its forward is wrapped to take ``cond`` and refuse anything but None,
    so every denoiser answers ``D(y, σ, cond=None)``.
    """

    name: ClassVar[str] = ""
    blind: ClassVar[bool] = False  # True: σ is accepted and ignored (Kadkhodaie et al.)
    # True: in eval mode the forward adds no constant and its only nonlinearities are
    # nn.ReLU modules, so J(y) is the network with y's ReLU masks frozen
    # (models.piecewise.frozen_relus; analysis.jacobian(method="frozen"))
    piecewise_linear: ClassVar[bool] = False
    conditional: bool = False
    latent: bool = False
    null_cond = None

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            MODELS[cls.name] = cls
        forward = cls.__dict__.get("forward")
        if forward is not None and "cond" not in inspect.signature(forward).parameters:
            cls.forward = _refusing_cond(forward)

    def __init__(self, **config):
        super().__init__()
        self.config = {"name": self.name, **config}

    def forward(self, y: torch.Tensor, sigma, cond=None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _refusing_cond(forward):
    """``forward(self, y, sigma)`` of an unconditional model as ``forward(self, y, sigma,
    cond=None)`` that refuses a condition (also given positionally, ``D(y, σ, cond)``)."""

    def forward_without_cond(self, y, *args, cond=None, **kw):
        if len(args) == 2:
            args, cond = args[:1], args[1]
        if cond is not None:
            raise InputError(f"{type(self).__name__} is unconditional: it takes no cond "
                             f"(got {type(cond).__name__}); pass cond=None")
        return forward(self, y, *args, **kw)

    forward_without_cond.__doc__ = forward.__doc__
    forward_without_cond.__qualname__ = forward.__qualname__
    return forward_without_cond


def build(name: str, *, data_shape=None, **kwargs) -> Denoiser:
    """Build a registered model by name, e.g. ``build("bf_unet", width=32)``.

    The architecture is sized first without memory (on the meta device): one with more
    than ``MAX_PARAMETERS`` parameters, or (given ``data_shape`` = [C, H, W] of the images
    it is for) one that down-samples more than those images allow, raises ConfigError.
    """
    from . import bias_free, mlp, unet  # noqa: F401 - registers the models

    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    with torch.device("meta"):
        skeleton = _construct(name, kwargs)
    n = sum(p.numel() for p in skeleton.parameters())
    if n > MAX_PARAMETERS:
        raise ConfigError(f"model {name!r} with {kwargs} has {n:.3g} parameters, above the "
                          f"limit of {MAX_PARAMETERS:.3g}; ask for fewer levels or less width")
    multiple = getattr(skeleton, "multiple", 1)
    if data_shape is not None and any(s % multiple for s in list(data_shape)[-2:]):
        raise ConfigError(f"model {name!r} with {kwargs} down-samples by {multiple}, which "
                          f"images of shape {list(data_shape)} do not allow; use fewer levels")
    return _construct(name, kwargs)


def _construct(name: str, kwargs: dict) -> Denoiser:
    try:
        return MODELS[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad arguments for model {name!r}: {err}") from None
