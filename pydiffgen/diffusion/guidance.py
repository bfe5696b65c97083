"""Conditions and classifier-free guidance for denoisers ``D(y, σ, cond)``.

A condition ``cond`` is class labels int64 ``[B]``, text embeddings ``[B, L, E]``, or a
dict of such tensors (batch first). A conditional denoiser defines ``null_cond``, its
"no condition" as a batch of one. Classifier-free guidance (Ho & Salimans 2022) with
weight w combines the conditional and unconditional outputs,

    D_w(y, σ, c) = D(y, σ, ∅) + w·(D(y, σ, c) − D(y, σ, ∅)),

so w = 1 is the conditional denoiser and w = 0 the unconditional one. :func:`guided`
binds a condition (and w) so that every sampler and analysis taking ``D(y, σ)`` runs on a
conditional model unchanged.
"""

from __future__ import annotations

import math

import torch

from ..errors import InputError
from ..models.base import Denoiser

__all__ = ["Guided", "expand_cond", "guided", "guided_call", "slice_cond", "take_cond"]


def _leaves(cond) -> dict:
    """The tensors of ``cond`` by name (one unnamed leaf for a bare tensor)."""
    if isinstance(cond, dict):
        if not cond:
            raise InputError("cond is an empty dict; give at least one tensor or None")
        return cond
    return {None: cond}


def _rebuild(cond, leaves: dict):
    return leaves if isinstance(cond, dict) else leaves[None]


def _batch(cond) -> int:
    """The batch size shared by every tensor of ``cond``."""
    sizes = set()
    for key, t in _leaves(cond).items():
        if not isinstance(t, torch.Tensor) or t.ndim == 0:
            what = "cond" if key is None else f"cond[{key!r}]"
            got = "a 0-d tensor" if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{what} must be a tensor with a batch dimension first, got {got}")
        sizes.add(t.shape[0])
    if len(sizes) != 1:
        raise InputError(f"the tensors of cond disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


def expand_cond(cond, n: int):
    """``cond`` for a batch of n: a batch-one cond (tensor or dict) broadcast to n, a
    batch-n cond checked and returned; None stays None.
    Tensors ``[1 or n, ...]`` -> ``[n, ...]``."""
    if cond is None:
        return None
    b = _batch(cond)
    if b not in (1, n):
        raise InputError(f"cond has batch size {b}; it must be 1 (shared) or {n} (one per sample)")
    return _rebuild(cond, {k: t.expand(n, *t.shape[1:]) for k, t in _leaves(cond).items()})


def slice_cond(cond, start: int, stop: int):
    """``cond[start:stop]`` along the batch (dicts too); None stays None."""
    if cond is None:
        return None
    return _rebuild(cond, {k: t[start:stop] for k, t in _leaves(cond).items()})


def take_cond(cond, index: torch.Tensor):
    """``cond[index]`` along the batch for an index tensor [A] (dicts too); None stays None."""
    if cond is None:
        return None
    return _rebuild(cond, {k: t[index.to(t.device)] for k, t in _leaves(cond).items()})


def _to(cond, device):
    return _rebuild(cond, {k: t.to(device) for k, t in _leaves(cond).items()})


def check_guidance(denoiser, cond, guidance) -> float | None:
    """Refuse a condition the denoiser cannot take and guidance it cannot do (one line
    each); returns w as a float, or None for no guidance."""
    if cond is not None and isinstance(denoiser, Denoiser) and not denoiser.conditional:
        raise InputError(f"cond was given but the denoiser {type(denoiser).__name__} is "
                         "unconditional (its .conditional is False); pass cond=None")
    if guidance is None:
        return None
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(
            guidance):
        raise InputError(f"guidance must be a finite number w (or None), got {guidance!r}")
    if getattr(denoiser, "null_cond", None) is None:
        raise InputError(f"guidance={guidance} needs a conditional denoiser with a null_cond; "
                         f"{type(denoiser).__name__} has none")
    if cond is None:
        raise InputError(f"guidance={guidance} needs a condition: pass cond=")
    return float(guidance)


def guided_call(denoiser, y: torch.Tensor, sigma, cond=None, guidance=None) -> torch.Tensor:
    """``D(y, σ, c)``, or with guidance w ``D(y, σ, ∅) + w·(D(y, σ, c) − D(y, σ, ∅))``.

    y: [B, *F]; sigma: [B] or a float; cond: batch 1 or B (None: ``D(y, σ)``, the call a
    plain ``(y, σ)`` callable takes). The two guided evaluations are separate calls, so
    each equals the model's own output for that condition bit for bit.
    """
    if cond is None:
        return denoiser(y, sigma)
    cond = _to(expand_cond(cond, y.shape[0]), y.device)
    D_c = denoiser(y, sigma, cond)
    if guidance is None:
        return D_c
    D_u = denoiser(y, sigma, _to(expand_cond(denoiser.null_cond, y.shape[0]), y.device))
    # Ho & Salimans 2022, Eq. 6 in denoiser form: D_∅ + w·(D_c − D_∅)
    return D_u + guidance * (D_c - D_u)


class Guided(Denoiser):
    """``D(y, σ)`` = a conditional denoiser with its condition (and guidance) bound.

    ``cond`` batch 1 applies to any batch; batch n only to inputs of batch n. The bound
    denoiser is unconditional (it refuses a further cond) and keeps the inner ``latent``.
    """

    def __init__(self, denoiser, cond, guidance: float | None):
        super().__init__()
        self.denoiser = denoiser  # an nn.Module is registered, so .eval() reaches it
        self.cond, self.guidance = cond, guidance
        self.latent = bool(getattr(denoiser, "latent", False))

    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:
        return guided_call(self.denoiser, y, sigma, self.cond, self.guidance)


def guided(denoiser, cond, guidance=None):
    """``denoiser`` with ``cond`` bound, as a plain ``D(y, σ)`` for any sampler or analysis.

    guidance: None (the conditional denoiser) or w (classifier-free guidance against
    ``denoiser.null_cond``). With cond and guidance both None the denoiser itself is
    returned, so a third-party ``(y, σ)`` callable is called exactly as before.
    """
    w = check_guidance(denoiser, cond, guidance)
    if cond is None:
        return denoiser
    _batch(cond)  # a malformed cond fails here, not at the first step
    return Guided(denoiser, cond, w)
