"""Memorization detectors for conditional models, per condition (class label or prompt).

- :func:`wen_score` (Wen et al., ICLR 2024, "Detecting, explaining, and mitigating
  memorization in diffusion models"): a memorized condition pulls the sample hard from
  the first steps on, so the text-conditional part of the noise prediction is large. In
  pydiffgen's σ-denoiser terms ε(y, σ, c) = (y − D(y, σ, c))/σ, and the detector is

      m(c) = mean over seeds and the first sampling steps t of ‖ε(x_t, c) − ε(x_t, ∅)‖
           = mean ‖D(x_t, σ_t, ∅) − D(x_t, σ_t, c)‖ / σ_t,

  needing no training data. For text embeddings c [L, E] the per-token attribution is
  ‖∂m/∂e_l‖ for each token embedding e_l (their §4).
- :func:`copy_detection`: generate n samples per condition, search the training set
  exactly (``metrics.memorization``: ``pydiffgen.ops.knn``) and count the copies by its
  criterion ‖x − NN1‖/‖x − NN2‖ < 1/3 (Yoon et al. 2023; Gu et al. 2023), ranked.
- :func:`detector_auc`: the ROC AUC of detector scores against known memorized /
  not-memorized labels (ties count one half).

Conditions go in as one batch ``conds`` of K (class labels [K], embeddings [K, L, E], or
a dict of batch-K tensors); condition k is ``slice_cond(conds, k, k + 1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._checks import check_positive_int, check_tensor
from ..diffusion import (
    edm_euler,
    expand_cond,
    guided,
    guided_call,
    karras_sigmas,
    sample,
    slice_cond,
)
from ..diffusion.guidance import check_guidance
from ..errors import InputError
from ..metrics import MemorizationReport, memorization
from .jacobian import eval_mode

__all__ = ["CopyDetection", "WenScores", "copy_detection", "detector_auc", "wen_score"]


@dataclass(frozen=True)
class WenScores:
    """Wen et al.'s detector for K conditions, S seeds and T first steps.

    score:     [K] the mean magnitude m(c) (higher: more likely memorized).
    magnitude: [K, S, T] ‖ε(x_t, c) − ε(x_t, ∅)‖ per seed and step.
    tokens:    [K, L] per-token attribution ‖∂m/∂e_l‖ (text embeddings), else None.
    ranking:   [K] condition indices, highest score first.
    """

    score: torch.Tensor
    magnitude: torch.Tensor
    tokens: torch.Tensor | None
    ranking: torch.Tensor


def _count(conds) -> int:
    """K, the number of conditions in the batch ``conds``."""
    if conds is None:
        raise InputError("conds is None; give the conditions to score as one batch of K")
    leaves = conds.values() if isinstance(conds, dict) else [conds]
    first = next(iter(leaves), None)
    if not isinstance(first, torch.Tensor) or first.ndim == 0:
        raise InputError("conds must be a tensor (or dict of tensors) with the K conditions "
                         "along the first dimension")
    k = first.shape[0]
    expand_cond(conds, k)  # the tensors agree on K
    return k


def _token_embeddings(cond) -> bool:
    return isinstance(cond, torch.Tensor) and cond.is_floating_point() and cond.ndim == 3


def wen_score(
    denoiser,
    conds,
    *,
    shape,
    steps: int = 1,
    seeds: Sequence[int] = (0, 1, 2, 3),
    sigmas=None,
    guidance: float | None = None,
    attribution: bool = True,
    device="cpu",
) -> WenScores:
    """Wen et al.'s magnitude m(c) for each of the K conditions in ``conds``.

    shape: one sample's shape (the latent shape for a latent model). For every seed s the
    initial noise x_0 = σ_0·z_s is the same for all conditions; the deterministic EDM
    Euler sampler then follows ``guided(denoiser, c, guidance)`` through ``sigmas``
    (default: the 50-step Karras schedule between the denoiser's ``sigma_min`` /
    ``sigma_max``, else 0.002 / 80), and m(c) averages over the first ``steps`` states.
    ``attribution``: with text embeddings [K, L, E], also the per-token gradient norms.
    """
    K = _count(conds)
    check_guidance(denoiser, conds, guidance)
    if getattr(denoiser, "null_cond", None) is None:
        raise InputError(f"wen_score needs a conditional denoiser with a null_cond; "
                         f"{type(denoiser).__name__} has none")
    steps = check_positive_int(steps, "steps")
    seeds = [check_positive_int(s, "seed", minimum=0) for s in seeds]
    if not seeds:
        raise InputError("seeds is empty; give at least one seed")
    if sigmas is None:
        sigmas = karras_sigmas(50, sigma_min=getattr(denoiser, "sigma_min", 0.002),
                               sigma_max=getattr(denoiser, "sigma_max", 80.0))
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)
    if steps > len(sigmas) - 1:
        raise InputError(f"steps={steps} but the schedule has {len(sigmas) - 1} steps")
    x0 = torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s))
                      for s in seeds]).to(device) * float(sigmas[0])  # [S, *shape]
    mags, tokens = [], []
    for k in range(K):
        c = slice_cond(conds, k, k + 1)
        _, traj = edm_euler(guided(denoiser, c, guidance), len(seeds), tuple(shape),
                            sigmas=sigmas[: steps + 1], x_init=x0, device=device,
                            return_trajectory=True)
        y = traj.x[:steps].flatten(0, 1)  # [T·S, *shape], step-major
        sigma = traj.sigma[:steps].flatten()  # [T·S]
        mag, grad = _magnitude(denoiser, y, sigma, c, attribution and _token_embeddings(c))
        mags.append(mag.view(steps, len(seeds)).T)  # [S, T]
        tokens.append(grad)
    magnitude = torch.stack(mags)  # [K, S, T]
    score = magnitude.mean(dim=(1, 2))
    return WenScores(score=score, magnitude=magnitude,
                     tokens=torch.stack(tokens) if tokens[0] is not None else None,
                     ranking=torch.argsort(score, descending=True, stable=True))


def _magnitude(denoiser, y, sigma, cond, attribute: bool):
    """‖D(y, σ, ∅) − D(y, σ, c)‖/σ per row of y [B, *F] (σ [B]), and with ``attribute`` the
    per-token norm [L] of the gradient of its mean w.r.t. the embeddings c [1, L, E]."""
    with eval_mode(denoiser), torch.no_grad():
        D_u = guided_call(denoiser, y, sigma, denoiser.null_cond)
    with eval_mode(denoiser), torch.set_grad_enabled(attribute):
        e = cond.detach().clone().requires_grad_(True) if attribute else cond
        D_c = guided_call(denoiser, y, sigma, e)
        # ε(y, c) − ε(y, ∅) = (D(y, ∅) − D(y, c)) / σ
        diff = (D_u - D_c) / sigma.view(-1, *([1] * (y.ndim - 1)))
        mag = diff.flatten(1).norm(dim=1)  # [B]
        if not attribute:
            return mag, None
        (grad,) = torch.autograd.grad(mag.mean(), e)  # [1, L, E]
    return mag.detach(), grad[0].norm(dim=-1)  # [B], [L]


@dataclass(frozen=True)
class CopyDetection:
    """Copies among n generated samples for each of K conditions.

    copies:   [K] how many samples are copies (``metrics.memorization``'s criterion).
    fraction: [K] copies / n.
    ranking:  [K] condition indices, most copies first (ties: smaller mean d1/d2 first).
    samples:  [K, n, *F] the samples (decoded to pixels for a latent model).
    reports:  the K :class:`MemorizationReport` (d1, d2, ratio, nn_index, memorized).
    """

    copies: torch.Tensor
    fraction: torch.Tensor
    ranking: torch.Tensor
    samples: torch.Tensor
    reports: list[MemorizationReport]


def copy_detection(
    denoiser,
    conds,
    train: torch.Tensor,
    *,
    n: int = 16,
    method: str = "heun",
    guidance: float | None = None,
    seed: int = 0,
    shape=None,
    encoder: Callable | None = None,
    threshold: float = 1 / 3,
    device="cpu",
    **sample_kw,
) -> CopyDetection:
    """Generate n samples per condition and count those that copy a training image.

    train: [N, *F] training images (pixels). shape: one sample's shape, default
    ``train.shape[1:]`` (give the latent shape for a latent model: its samples are decoded
    with ``denoiser.decode`` before the search). encoder: optional ``encoder(x [B, *F]) ->
    [B, D]`` features in which to search (both samples and train), e.g. a
    ``pydiffgen.features`` extractor. ``method``, ``seed``, ``guidance`` and
    ``**sample_kw`` go to :func:`pydiffgen.diffusion.sample` (same seed for every
    condition, so all start from the same noise).
    """
    K = _count(conds)
    n = check_positive_int(n, "n")
    train = check_tensor(train, "train", min_ndim=2)
    shape = tuple(train.shape[1:]) if shape is None else tuple(shape)
    keys = train if encoder is None else encoder(train)
    all_samples, reports = [], []
    for k in range(K):
        x = sample(denoiser, n, shape, method, cond=slice_cond(conds, k, k + 1),
                   guidance=guidance, seed=seed, device=device, **sample_kw)
        if getattr(denoiser, "latent", False):
            x = denoiser.decode(x)
        all_samples.append(x)
        queries = x if encoder is None else encoder(x)
        reports.append(memorization(queries.to(keys.device), keys, threshold))
    copies = torch.tensor([int(r.memorized.sum()) for r in reports])
    mean_ratio = torch.tensor([float(r.ratio.double().mean()) for r in reports])
    # most copies first; among equals the closer copies (smaller mean d1/d2) first
    order = torch.argsort(mean_ratio, stable=True)
    ranking = order[torch.argsort(copies[order], descending=True, stable=True)]
    return CopyDetection(copies=copies, fraction=copies.double() / n, ranking=ranking,
                         samples=torch.stack(all_samples), reports=reports)


def detector_auc(scores, labels) -> float:
    """ROC AUC of ``scores`` [K] (higher = more likely memorized) against ``labels`` [K]
    (1/True memorized, 0/False not): the probability that a memorized condition scores
    above a non-memorized one, ties counting one half (Mann–Whitney U / (P·N))."""
    scores = torch.as_tensor(scores).double().flatten()
    labels = torch.as_tensor(labels).flatten()
    if labels.shape != scores.shape:
        raise InputError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} "
                         "must have the same length")
    if not torch.isfinite(scores).all():
        raise InputError("scores hold NaN or Inf")
    if labels.is_floating_point() or not bool(((labels == 0) | (labels == 1)).all()):
        raise InputError("labels must be 0/1 (or bool): 1 for a memorized condition")
    pos, neg = scores[labels == 1], scores[labels == 0].sort().values
    if not len(pos) or not len(neg):
        raise InputError("detector_auc needs at least one memorized and one other condition")
    below = torch.searchsorted(neg, pos, side="left")  # negatives strictly below each positive
    upto = torch.searchsorted(neg, pos, side="right")
    u = below.sum().double() + 0.5 * (upto - below).sum().double()
    return float(u / (len(pos) * len(neg)))
