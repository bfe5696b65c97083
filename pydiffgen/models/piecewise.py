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

With ``fold_batchnorm=True`` every eval-mode :class:`BFBatchNorm2d` that directly follows
a bias-free ``nn.Conv2d`` in the same container is folded into that convolution's weight
(BF-BN in eval mode is the per-channel scale gain/running_std) and replaced by identity:
one elementwise pass less per layer. In replay without autograd, a ReLU whose input is
certainly a fresh tensor (it follows a convolution in an ``nn.Sequential``) applies its
mask in place: no allocation per layer. Both rewrites look only inside ``nn.Sequential``
containers, where the order of the children is the order of the data flow.

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
from .blocks import BFBatchNorm2d

__all__ = ["ActivationPattern", "frozen_relus"]


class ActivationPattern:
    """The ReLU masks of one recorded forward pass, and the replay state."""

    def __init__(self):
        self.mode = "off"  # "off" (plain ReLU), "record", "replay"
        self.masks: list[torch.Tensor] = []  # one [B, ...] 0/1 tensor per ReLU call
        self.position = 0
        self.group = 1

    def apply(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
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
            rows = x.view(B, self.group, *x.shape[1:])
            if inplace and not torch.is_grad_enabled():
                return rows.mul_(mask.unsqueeze(1)).view(x.shape)
            return (rows * mask.unsqueeze(1)).view(x.shape)
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
    def __init__(self, pattern: ActivationPattern, inplace: bool):
        super().__init__()
        self.pattern = pattern
        self.inplace = inplace  # safe: the input is a fresh tensor nobody else holds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pattern.apply(x, self.inplace)


def _folded_conv(conv: nn.Conv2d, bn: BFBatchNorm2d) -> nn.Conv2d | None:
    """conv followed by eval-mode BF-BN as one convolution (None when not foldable)."""
    if (type(conv) is not nn.Conv2d or conv.bias is not None or bn.training
            or conv.out_channels != bn.num_features):
        return None
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                       conv.padding, conv.dilation, conv.groups, bias=False,
                       padding_mode=conv.padding_mode, device=conv.weight.device,
                       dtype=conv.weight.dtype)
    with torch.no_grad():
        # Mohan et al. 2020, BF-BN in eval mode: x ↦ x · gain/running_std, per channel
        scale = (bn.gain / bn.running_std).to(conv.weight.dtype)  # [C_out]
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    return folded


@contextmanager
def frozen_relus(model: nn.Module, *, fold_batchnorm: bool = False):
    """Swap every ``nn.ReLU`` in ``model`` for a pattern-recording/replaying module (and,
    with ``fold_batchnorm``, fold eval-mode BF-BN into the convolution before it).

    Yields the :class:`ActivationPattern`; the original modules are restored on exit.
    """
    pattern = ActivationPattern()
    swapped = []  # (parent, attribute name, original module)
    for parent in list(model.modules()):
        children = list(parent.named_children())
        replacements = {}
        for i, (name, child) in enumerate(children):
            previous = children[i - 1][1] if i > 0 else None
            # child order is data flow only in a Sequential
            sequential = isinstance(parent, nn.Sequential)
            if (fold_batchnorm and sequential and isinstance(child, BFBatchNorm2d)
                    and previous is not None):
                folded = _folded_conv(replacements.get(children[i - 1][0], previous), child)
                if folded is not None:
                    replacements[children[i - 1][0]] = folded
                    replacements[name] = nn.Identity()
            elif isinstance(child, nn.ReLU):
                # in a Sequential, the output of a convolution (possibly through a folded
                # BN, now identity) reaches only this ReLU
                earlier = [replacements.get(n, c) for n, c in children[:i]]
                source = next((c for c in reversed(earlier) if not isinstance(c, nn.Identity)),
                              None)
                inplace = sequential and isinstance(source, (nn.Conv2d, nn.ConvTranspose2d))
                replacements[name] = _PatternReLU(pattern, inplace)
        for name, new in replacements.items():
            swapped.append((parent, name, getattr(parent, name)))
            setattr(parent, name, new)
    try:
        yield pattern
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
