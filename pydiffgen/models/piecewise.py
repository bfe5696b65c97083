"""Frozen activation patterns of piecewise-linear networks (for exact, fast Jacobians).

A bias-free ReLU network in eval mode is linear once its ReLU on/off pattern is fixed:
``f(y) = J(y) y`` and ``J(y) v`` is the network applied to ``v`` with every ReLU replaced
by a multiplication with the 0/1 mask it had on ``y`` (Mohan et al. 2020; Kadkhodaie
et al. 2024). :func:`frozen_relus` swaps every ``nn.ReLU`` of a model for a module that

- in ``record`` mode computes ReLU and stores the mask ``x > 0`` of each call, in call
  order (a module called twice records twice);
- in ``replay`` mode multiplies its input by the recorded mask of the same call. Inputs in
  replay hold ``group`` rows per recorded sample, sample-major (``[B·group, ...]``), so
  one pattern is applied to many vectors at once.

A model opts in by setting ``piecewise_linear = True`` (see :class:`Denoiser`): it
promises that in eval mode every nonlinearity is an ``nn.ReLU`` module and nothing adds
a constant. Callers should still verify a replay against the real forward (the Jacobian
code replays ``y`` and ``0`` and compares), since a functional ``relu`` call or a bias
would silently break the promise.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import InputError

__all__ = ["ActivationPattern", "frozen_relus"]


class ActivationPattern:
    """The ReLU masks of one recorded forward pass, and the replay state."""

    def __init__(self):
        self.mode = "off"  # "off" (plain ReLU), "record", "replay"
        self.masks: list[torch.Tensor] = []  # one [B, ...] 0/1 tensor per ReLU call
        self.position = 0
        self.group = 1

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            mask = (x > 0).to(x.dtype)  # [B, ...]
            self.masks.append(mask)
            return x * mask
        if self.mode == "replay":
            if self.position >= len(self.masks):
                raise InputError(
                    "replay called more ReLUs than the recorded forward pass; the model's "
                    "forward is not a fixed sequence of ReLU calls"
                )
            mask = self.masks[self.position]
            self.position += 1
            B = mask.shape[0]
            if x.shape[0] != B * self.group or x.shape[1:] != mask.shape[1:]:
                raise InputError(
                    f"replayed activation has shape {tuple(x.shape)} but the recorded mask "
                    f"is {tuple(mask.shape)} with {self.group} rows per sample"
                )
            # [B, group, ...] · [B, 1, ...]: every row of a sample gets that sample's mask
            return (x.view(B, self.group, *x.shape[1:]) * mask.unsqueeze(1)).view(x.shape)
        return torch.relu(x)

    def record(self, fn, *args):
        """Run ``fn(*args)`` recording the masks (replaces any earlier recording)."""
        self.masks, self.mode = [], "record"
        try:
            return fn(*args)
        finally:
            self.mode = "off"

    def replay(self, fn, *args, group: int):
        """Run ``fn(*args)`` with the recorded masks, ``group`` rows per recorded sample."""
        self.mode, self.position, self.group = "replay", 0, group
        try:
            out = fn(*args)
        finally:
            self.mode = "off"
        if self.position != len(self.masks):
            raise InputError(
                f"replay used {self.position} of {len(self.masks)} recorded ReLU masks; the "
                "model's forward is not a fixed sequence of ReLU calls"
            )
        return out


class _PatternReLU(nn.Module):
    def __init__(self, pattern: ActivationPattern):
        super().__init__()
        self.pattern = pattern

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pattern.apply(x)


@contextmanager
def frozen_relus(model: nn.Module):
    """Swap every ``nn.ReLU`` in ``model`` for a pattern-recording/replaying module.

    Yields the :class:`ActivationPattern`; the original modules are restored on exit.
    """
    pattern = ActivationPattern()
    swapped = []  # (parent, attribute name, original module)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                swapped.append((parent, name, child))
                setattr(parent, name, _PatternReLU(pattern))
    try:
        yield pattern
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
