"""The per-noise-level generalization gap (Kaiser & Kollmann 2026, docs/science.md#per-sigma-gap).

Take the same number of training and held-out images, fix one noise draw per image
(seeded), and at every noise level σ measure the denoising error

    E(σ) = mean_x ‖D(x + σn, σ) − x‖² / d                     (d = pixels per image)

for training and held-out images, and the relative gap

    G(σ) = (E_val(σ) − E_train(σ)) / E_train(σ).

A memorizing denoiser reconstructs its training images better than unseen ones, at
intermediate σ: at small σ every denoiser is close to the identity (E ≈ σ² for both)
and at large σ every denoiser outputs about the data mean (E ≈ variance for both), so G
vanishes at both ends and peaks in between; the peak grows with training time. Along
with the gap, the distance of the denoiser to the empirical optimum D_M of its training
set (RMSE and NMSE per σ, docs/science.md#score-difference) tells how near D is to D_M.

``noise_level_gap_over_training`` trains a model with :func:`pydiffgen.train` and
evaluates the gap at chosen steps from its callback (memorization grows with training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._checks import check_positive_int, check_same_image_shape, check_tensor
from ..errors import InputError
from .distances import _apply, fixed_noise, output_distance

__all__ = ["GapResult", "default_sigmas", "noise_level_gap", "noise_level_gap_over_training"]


def default_sigmas(n: int = 64, sigma_min: float = 0.002, sigma_max: float = 80.0) -> list[float]:
    """``n`` log-spaced noise levels in [sigma_min, sigma_max] (the EDM range by default)."""
    n = check_positive_int(n, "n")
    if not 0 < sigma_min <= sigma_max or not math.isfinite(sigma_max):
        raise InputError(f"need 0 < sigma_min <= sigma_max < inf, got {sigma_min}, {sigma_max}")
    if n == 1:
        return [float(sigma_min)]
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]


@dataclass
class GapResult:
    """Per-σ denoising errors of a denoiser on training and held-out images.

    sigma:          [S] noise levels.
    error_train:    [S] E_train(σ) = mean ‖D(x + σn, σ) − x‖²/d over training images.
    error_heldout:  [S] E_val(σ), the same on held-out images.
    gap:            [S] G(σ) = (E_val − E_train)/E_train (+inf where E_train = 0, as for the
                    empirical optimum at small σ, which returns training images exactly).
    rmse_optimum:   [S] mean sqrt(‖D − D_M‖²/d) on the same noisy inputs (train and
                    held-out together), or None when not computed.
    nmse_optimum:   [S] mean ‖D − D_M‖/‖D‖, or None.
    n_images:       images per split; ``noise_draws`` noise draws per image.
    """

    sigma: list[float]
    error_train: list[float]
    error_heldout: list[float]
    gap: list[float]
    rmse_optimum: list[float] | None = None
    nmse_optimum: list[float] | None = None
    n_images: int = 0
    noise_draws: int = 1
    extra: dict = field(default_factory=dict)

    def peak(self) -> tuple[float, float]:
        """``(σ, G(σ))`` where the gap is largest."""
        i = max(range(len(self.gap)), key=lambda j: self.gap[j])
        return self.sigma[i], self.gap[i]

    def mean_gap(self, sigma_min: float = 0.0, sigma_max: float = math.inf) -> float:
        """Average G over the σ in [sigma_min, sigma_max] (the log-spaced grid's mean)."""
        vals = [g for s, g in zip(self.sigma, self.gap) if sigma_min <= s <= sigma_max]
        if not vals:
            raise InputError(f"no σ of this result lies in [{sigma_min}, {sigma_max}]")
        return sum(vals) / len(vals)

    def to_dict(self) -> dict:
        peak_sigma, peak_gap = self.peak()
        return {
            "sigma": self.sigma, "error_train": self.error_train,
            "error_heldout": self.error_heldout, "gap": self.gap,
            "rmse_optimum": self.rmse_optimum, "nmse_optimum": self.nmse_optimum,
            "n_images": self.n_images, "noise_draws": self.noise_draws,
            "peak_sigma": peak_sigma, "peak_gap": peak_gap, **self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> GapResult:
        keys = ("sigma", "error_train", "error_heldout", "gap", "rmse_optimum",
                "nmse_optimum", "n_images", "noise_draws")
        return cls(**{k: d[k] for k in keys if k in d})


@torch.no_grad()
def noise_level_gap(
    denoiser,
    train: torch.Tensor,
    heldout: torch.Tensor,
    sigmas=None,
    *,
    n_images: int | None = None,
    noise_draws: int = 1,
    seed: int = 0,
    optimum="empirical",
    batch_size: int = 256,
    class_labels=None,
) -> GapResult:
    """G(σ) = (E_val − E_train)/E_train of ``denoiser`` (Kaiser & Kollmann 2026).

    denoiser:    any callable ``D(y [B, *F], sigma [B]) -> [B, *F]``.
    train:       the denoiser's training set [N, *F]; the first ``n`` images are evaluated.
    heldout:     images it never saw [N', *F]; the first ``n`` are evaluated.
    sigmas:      noise levels (default: 64 log-spaced σ in [0.002, 80]).
    n_images:    n, the images per split (default: min(N, N')); the same count for both.
    noise_draws: noise draws per image (default 1; more for tiny sets such as 2-D toys).
                 Each (image, draw) has its own fixed noise n, reused at every σ, from
                 ``seed`` (train) and ``seed + 1`` (held-out).
    optimum:     "empirical" (the empirical optimum D_M of all of ``train``), another
                 denoiser to measure the distance to, or None (skip the distance).
    class_labels: for a class-conditional denoiser called ``denoiser(y, sigma, labels)``:
                 ``(train_labels [N], heldout_labels [N'])`` int tensors.
    Returns a :class:`GapResult`.
    """
    if not callable(denoiser):
        raise InputError(f"denoiser must be callable as denoiser(y, sigma), got "
                         f"{type(denoiser).__name__}")
    check_tensor(train, "train", min_ndim=2)
    check_tensor(heldout, "heldout", min_ndim=2)
    check_same_image_shape(train, heldout, "train", "heldout")
    n = _images_per_split(train, heldout, n_images)
    noise_draws = check_positive_int(noise_draws, "noise_draws")
    batch_size = check_positive_int(batch_size, "batch_size")
    sig = default_sigmas() if sigmas is None else _check_sigmas(sigmas)
    optimum = _optimum(optimum, train)
    lab_tr, lab_va = _repeated_labels(class_labels, n, noise_draws)  # [n·r] each, or None
    x_tr = train[:n].repeat_interleave(noise_draws, 0)  # [n·r, *F]
    x_va = heldout[:n].repeat_interleave(noise_draws, 0)  # [n·r, *F]
    z_tr = fixed_noise(x_tr, seed)
    z_va = fixed_noise(x_va, seed + 1)
    e_tr, e_va, gap, rmse, nmse = [], [], [], [], []
    for s in sig:
        y_tr, y_va = x_tr + s * z_tr, x_va + s * z_va  # y = x + σ n
        D_tr = _apply_labeled(denoiser, y_tr, s, batch_size, lab_tr)
        D_va = _apply_labeled(denoiser, y_va, s, batch_size, lab_va)
        # E(σ) = mean ‖D(x + σn, σ) − x‖²/d (Kaiser & Kollmann 2026)
        et, ev = _mse(D_tr, x_tr), _mse(D_va, x_va)
        e_tr.append(et)
        e_va.append(ev)
        # G(σ) = (E_val − E_train)/E_train; +inf when training images come back exactly
        gap.append((ev - et) / et if et > 0 else (math.inf if ev > 0 else 0.0))
        if optimum is not None:
            D = torch.cat([D_tr, D_va])
            D_M = torch.cat([_apply(optimum, y_tr, s, batch_size),
                             _apply(optimum, y_va, s, batch_size)])
            dist = output_distance(D, D_M)
            rmse.append(dist["rmse"])
            nmse.append(dist["nmse"])
    return GapResult(sigma=sig, error_train=e_tr, error_heldout=e_va, gap=gap,
                     rmse_optimum=rmse if optimum is not None else None,
                     nmse_optimum=nmse if optimum is not None else None,
                     n_images=n, noise_draws=noise_draws)


def noise_level_gap_over_training(
    model: torch.nn.Module,
    train: torch.Tensor,
    heldout: torch.Tensor,
    config,
    eval_steps,
    sigmas=None,
    *,
    out_dir=None,
    progress: bool = False,
    **gap_kw,
) -> dict[int, GapResult]:
    """Train ``model`` on ``train`` with ``pydiffgen.train(model, train, config)`` and
    measure :func:`noise_level_gap` at each step of ``eval_steps`` (memorization grows
    with training time, at intermediate σ; Kaiser & Kollmann 2026).

    The gap is taken on the live weights at that step (the training callback sees those,
    not the EMA copy), in eval mode, and training continues unchanged afterwards: the
    evaluation uses its own generator and leaves the training RNG alone. ``out_dir`` is
    passed to ``train``; on a resumed run steps done before are not re-evaluated.
    ``gap_kw`` go to :func:`noise_level_gap`. Returns ``{step: GapResult}``.
    """
    from ..training import train as train_fn

    steps = sorted({check_positive_int(int(s), "eval_steps") for s in eval_steps})
    if not steps:
        raise InputError("eval_steps must name at least one training step")
    if steps[-1] > config.steps:
        raise InputError(f"eval_steps go up to {steps[-1]} but config.steps is {config.steps}")
    wanted = set(steps)
    gap_kw.setdefault("optimum", "empirical")
    if gap_kw["optimum"] == "empirical":
        from .empirical import EmpiricalDenoiser

        gap_kw["optimum"] = EmpiricalDenoiser(train)
    results: dict[int, GapResult] = {}

    def callback(step, loss, live):
        if step in wanted:
            results[step] = noise_level_gap(live, train, heldout, sigmas, **gap_kw)
            results[step].extra["loss"] = loss
            live.train()  # _apply restores the mode; be explicit for the next step

    train_fn(model, train, config, out_dir=out_dir, progress=progress, callback=callback)
    return results


def _apply_labeled(denoiser, y, sigma: float, batch_size: int, labels):
    if labels is None:
        return _apply(denoiser, y, sigma, batch_size)
    if len(labels) != len(y):
        raise InputError(f"class_labels hold {len(labels)} labels for {len(y)} images")
    was_training = isinstance(denoiser, torch.nn.Module) and denoiser.training
    if was_training:
        denoiser.eval()
    try:
        outs = []
        for i in range(0, len(y), batch_size):
            lab = labels[i: i + batch_size].to(y.device)

            def den(yb, sb, lab=lab):
                return denoiser(yb, sb, lab)
            outs.append(_apply(den, y[i: i + batch_size], sigma, batch_size))
        return torch.cat(outs)
    finally:
        if was_training:
            denoiser.train()


def _images_per_split(train, heldout, n_images) -> int:
    """n: ``n_images``, or by default as many as both splits have."""
    n = min(len(train), len(heldout))
    if n_images is None:
        return n
    n_images = check_positive_int(n_images, "n_images")
    if n_images > n:
        raise InputError(f"n_images={n_images} exceeds the images available per split "
                         f"(train {len(train)}, heldout {len(heldout)})")
    return n_images


def _optimum(optimum, train):
    """The denoiser to measure the distance to: D_M of ``train`` for "empirical"."""
    if optimum == "empirical":
        from .empirical import EmpiricalDenoiser

        return EmpiricalDenoiser(train).to(train.device)
    if optimum is not None and not callable(optimum):
        raise InputError(f"optimum must be 'empirical', a denoiser or None, got {optimum!r}")
    return optimum


def _repeated_labels(class_labels, n: int, noise_draws: int):
    """(train, heldout) labels of the first n images, each repeated ``noise_draws`` times
    like the images; (None, None) without ``class_labels``."""
    if class_labels is None:
        return None, None
    try:
        lab_tr, lab_va = (torch.as_tensor(v)[:n].repeat_interleave(noise_draws, 0)
                          for v in class_labels)
    except (TypeError, ValueError):
        raise InputError("class_labels must be a pair (train_labels, heldout_labels) of "
                         "int tensors") from None
    return lab_tr, lab_va


def _check_sigmas(sigmas) -> list[float]:
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.reshape(-1).tolist()
    elif isinstance(sigmas, (int, float)):
        sigmas = [sigmas]
    sig = [float(s) for s in sigmas]
    if not sig or not all(math.isfinite(s) and s > 0 for s in sig):
        raise InputError(f"sigmas must be a non-empty list of positive finite numbers, got {sig}")
    return sig


def _mse(D: torch.Tensor, x: torch.Tensor) -> float:
    return float((D.double() - x.double()).square().flatten(1).mean(1).mean())
