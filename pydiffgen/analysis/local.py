"""Local and patch closed-form denoisers: what convolutional networks compute
(docs/science.md §9).

With Ω_p(y) the s × s patch of y centred at pixel p (all C channels, a row of P = C·s²
values) and the logits l = −‖Ω_p(y) − Q‖²/(2σ²) against training patches Q:

- :class:`LocalEmpiricalDenoiser` — the local score machine of Kamb & Ganguli (2024, "an
  analytic theory of creativity in convolutional diffusion models"). Output pixel p is
  Σ_Q softmax(l) · centre(Q), over the training patches at the same location p (LS) or at
  every location (ELS, ``equivariant=True``: translation equivariance).
- :class:`PatchPosteriorDenoiser` — the patch set posterior composite (PSPC) of Niedoba
  et al. (2024, "towards a mechanistic explanation of diffusion model generalization"):
  the posterior mean of every patch, Σ_Q softmax(l) · Q over the patch set of all
  training patches at every location (``equivariant=False``: the same location only),
  composited by averaging, at each pixel, the estimates of the patches that cover it.
- :func:`calibrate_patch_size` — the patch size per σ whose LS / ELS (or PSPC) output
  best predicts a network on held-out noisy images, with its r² (as Kamb & Ganguli
  calibrate).

Boundary: images are zero-padded by s // 2 on each side, the padding of the convolutions
these machines model. At the border a patch holds zeros where the image ends, so ELS
prefers training patches from the border too — the way zero padding lets a CNN break
translation equivariance there, which Kamb & Ganguli identify as the source of
boundary-dependent structure. For LS the padding is the same in every training patch at
a location, so it does not change the weights.

Known answers (tests/analysis/test_local.py): with s ≥ 2H − 1 (and 2W − 1) every patch
holds the whole image, so LS (and non-equivariant PSPC) is exactly the empirical optimum
D_M; s = 1 is the per-pixel posterior of pixel values.

Every weighted average is :func:`pydiffgen.ops.empirical_denoiser` on patch rows (its
exact logits, streamed tiles and, on CUDA, its Triton kernel): LS calls it once per
location with that location's N training patches, ELS and PSPC once with all N·H·W
training patches as keys. Memory is O(queries·P + keys·P); no [queries, keys] matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .._checks import as_sigma, check_tensor
from ..errors import InputError
from ..models.base import Denoiser
from ..ops.empirical import empirical_denoiser

__all__ = ["PATCH_MODELS", "LocalEmpiricalDenoiser", "PatchCalibration", "PatchPosteriorDenoiser",
           "calibrate_patch_size", "image_patches", "r_squared"]


def _patch_shape(size, name: str = "patch_size") -> tuple[int, int]:
    """(s_h, s_w) from an int or a pair; both odd (a patch has a centre pixel) and ≥ 1."""
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(
        size, (tuple, list)) else None
    if (pair is None or len(pair) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 or s % 2 == 0
                   for s in pair)):
        raise InputError(f"{name} must be an odd positive integer or a pair of them, "
                         f"got {size!r}")
    return pair


def image_patches(x: torch.Tensor, size) -> torch.Tensor:
    """Every s_h × s_w patch of ``x`` [B, C, H, W], zero-padded, one per pixel, as rows:
    [B, H·W, C·s_h·s_w] (location-major, row-major over pixels; channel-major in a row)."""
    sh, sw = _patch_shape(size)
    padded = F.pad(x, (sw // 2, sw // 2, sh // 2, sh // 2))
    return F.unfold(padded, (sh, sw)).transpose(1, 2)


def _centre(size, channels: int) -> torch.Tensor:
    """Indices [C] of the centre pixel's channels in a patch row of ``image_patches``."""
    sh, sw = size
    return torch.arange(channels) * sh * sw + (sh // 2) * sw + sw // 2


def _check_images(y: torch.Tensor, train: torch.Tensor) -> None:
    check_tensor(y, "y", ndim=4, nonempty=False)
    if y.shape[1:] != train.shape[1:]:
        raise InputError(f"y must have shape [B, {', '.join(map(str, train.shape[1:]))}] like "
                         f"the training set, got {tuple(y.shape)}")


class _PatchModel(Denoiser):
    """What the local and patch models share: the training images, the patch size (fixed or
    a function of σ) and the grouping of a batch by patch size."""

    def __init__(self, train, patch_size, equivariant: bool, backend: str | None):
        check_tensor(train, "train", ndim=4)
        if not callable(patch_size):
            _patch_shape(patch_size)
        if not isinstance(equivariant, bool):
            raise InputError(f"equivariant must be True or False, got {equivariant!r}")
        super().__init__(equivariant=equivariant, backend=backend)
        self.register_buffer("train_set", train.detach(), persistent=False)
        self.patch_size = patch_size
        self.equivariant = equivariant
        self.backend = backend

    def size_at(self, sigma: float) -> tuple[int, int]:
        """The patch shape (s_h, s_w) used at noise level ``sigma``."""
        size = self.patch_size(sigma) if callable(self.patch_size) else self.patch_size
        return _patch_shape(size, f"patch_size({sigma:g})" if callable(self.patch_size)
                            else "patch_size")

    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:
        """D(y [B, C, H, W], σ float | [B]) -> [B, C, H, W] in the promoted dtype of y and
        the training set (float32 or float64)."""
        _check_images(y, self.train_set)
        sig = as_sigma(sigma, y.shape[0], device=y.device, dtype=torch.float64)
        dtype = torch.promote_types(y.dtype, self.train_set.dtype)
        out = torch.empty(y.shape, dtype=dtype, device=y.device)
        sizes = [self.size_at(float(s)) for s in sig]
        for size in dict.fromkeys(sizes):  # rows grouped by patch size, in order
            rows = torch.tensor([s == size for s in sizes], device=y.device)
            out[rows] = self.denoise(y[rows], sig[rows], size).to(dtype)
        return out

    def patch_means(self, y, sig, size) -> torch.Tensor:
        """Posterior means of y's patches [B, H·W, P]: Σ_Q softmax(l) · Q over the training
        patches Q at the same location, or (equivariant) at every location."""
        B = y.shape[0]
        queries = image_patches(y, size)  # [B, L, P]
        keys = image_patches(self.train_set.to(y.device), size)  # [N, L, P]
        L, P = queries.shape[1:]
        if self.equivariant:  # all N·L training patches are keys of every query patch
            flat = empirical_denoiser(queries.reshape(B * L, P), keys.reshape(-1, P),
                                      sig.repeat_interleave(L), self.backend)
            return flat.reshape(B, L, P)
        return torch.stack([empirical_denoiser(queries[:, p], keys[:, p], sig, self.backend)
                            for p in range(L)], dim=1)


class LocalEmpiricalDenoiser(_PatchModel):
    """The (equivariant) local score machine of Kamb & Ganguli (2024), LS / ELS.

    ``train`` [N, C, H, W]; ``patch_size`` an odd int, an odd (s_h, s_w) pair, or a
    function σ -> either (e.g. :meth:`PatchCalibration.patch_size`); ``equivariant``
    False: training patches at the same location (LS), True: at every location (ELS).
    ``backend`` is passed to :func:`pydiffgen.ops.empirical_denoiser`.
    Output pixel p: Σ_Q softmax_Q(−‖Ω_p(y) − Q‖²/(2σ²)) · centre(Q).
    """

    def __init__(self, train: torch.Tensor, patch_size: int | tuple | Callable, *,
                 equivariant: bool = False, backend: str | None = None):
        super().__init__(train, patch_size, equivariant, backend)

    def denoise(self, y, sig, size) -> torch.Tensor:
        """y [B, C, H, W] at σ [B] with one patch shape: the centre pixels of the patch
        posterior means."""
        B, C, H, W = y.shape
        means = self.patch_means(y, sig, size)  # [B, H·W, P]
        centre = means[:, :, _centre(size, C).to(y.device)]  # [B, H·W, C]
        return centre.transpose(1, 2).reshape(B, C, H, W)


class PatchPosteriorDenoiser(_PatchModel):
    """Patch set posterior composite (PSPC) of Niedoba et al. (2024).

    Every patch's posterior mean Σ_Q softmax_Q(−‖Ω_q(y) − Q‖²/(2σ²)) · Q over the patch set
    (all training patches at every location; ``equivariant=False``: at location q only),
    composited: pixel p is the mean, over the patches Ω_q that contain p, of their
    estimate of p. Arguments as :class:`LocalEmpiricalDenoiser`.
    """

    def __init__(self, train: torch.Tensor, patch_size: int | tuple | Callable, *,
                 equivariant: bool = True, backend: str | None = None):
        super().__init__(train, patch_size, equivariant, backend)

    def denoise(self, y, sig, size) -> torch.Tensor:
        """y [B, C, H, W] at σ [B] with one patch shape: overlapping patch means averaged."""
        B, C, H, W = y.shape
        sh, sw = size
        means = self.patch_means(y, sig, size).double().transpose(1, 2)  # [B, P, H·W]
        padded = (H + 2 * (sh // 2), W + 2 * (sw // 2))
        total = F.fold(means, padded, (sh, sw))  # Σ of the estimates at each pixel
        count = F.fold(torch.ones_like(means[:1]), padded, (sh, sw))  # patches per pixel
        crop = (slice(None), slice(None), slice(sh // 2, sh // 2 + H), slice(sw // 2, sw // 2 + W))
        return total[crop] / count[crop]


def r_squared(target: torch.Tensor, prediction: torch.Tensor) -> float:
    """Coefficient of determination of ``prediction`` for ``target`` (same shape):
    1 − Σ(target − prediction)² / Σ(target − mean(target))², float64, over all entries."""
    if target.shape != prediction.shape:
        raise InputError(f"target and prediction must have one shape, got "
                         f"{tuple(target.shape)} and {tuple(prediction.shape)}")
    t, p = target.double(), prediction.double()
    total = (t - t.mean()).square().sum()
    return float(1 - (t - p).square().sum() / total.clamp_min(1e-300))


# the closed-form patch models calibrate_patch_size can fit, by their papers' names
PATCH_MODELS = {
    "LS": lambda train, size, backend: LocalEmpiricalDenoiser(train, size, backend=backend),
    "ELS": lambda train, size, backend: LocalEmpiricalDenoiser(train, size, equivariant=True,
                                                               backend=backend),
    "PSPC": lambda train, size, backend: PatchPosteriorDenoiser(train, size, backend=backend),
}


@dataclass(frozen=True)
class PatchCalibration:
    """Result of :func:`calibrate_patch_size` for one patch model ("LS", "ELS" or "PSPC"):
    for each σ, the r² and RMSE of every candidate patch size (``r2[i][k]`` for
    ``sigma[i]``, ``candidates[k]``), the best size and its r² and RMSE."""

    model: str
    sigma: list[float]
    candidates: list[int]
    r2: list[list[float]]
    rmse: list[list[float]]
    best: list[int]
    best_r2: list[float]
    best_rmse: list[float]

    def patch_size(self, sigma: float) -> int:
        """The calibrated size at the calibrated σ nearest to ``sigma`` in log σ (a
        ``patch_size`` function for :class:`LocalEmpiricalDenoiser`)."""
        i = min(range(len(self.sigma)), key=lambda i: abs(math.log(self.sigma[i] / sigma)))
        return self.best[i]

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("model", "sigma", "candidates", "r2", "rmse",
                                              "best", "best_r2", "best_rmse")}


@torch.no_grad()
def calibrate_patch_size(network, train: torch.Tensor, heldout: torch.Tensor, sigmas,
                         candidates=(1, 3, 5, 7, 9), *, model: str = "ELS", seed: int = 0,
                         batch_size: int = 256, backend: str | None = None) -> PatchCalibration:
    """For each σ, the patch size whose ``model`` ("LS", "ELS" or "PSPC") output best
    predicts ``network`` on the noisy held-out images y = x + σ n (n fixed by ``seed``, the
    same at every σ): the largest r² = 1 − ‖D_net − D_s‖² / ‖D_net − mean D_net‖²
    (:func:`r_squared`, as Kamb & Ganguli calibrate). RMSE = mean over images of
    ‖D_net − D_s‖/√d (``output_distance``).

    network: a denoiser D(y [B, C, H, W], σ [B]); train, heldout [N, C, H, W] (held-out
    images the network did not see); candidates: odd patch sizes.
    """
    from .distances import denoiser_outputs, output_distance

    check_tensor(heldout, "heldout", ndim=4)
    if model not in PATCH_MODELS:
        raise InputError(f"model must be one of {', '.join(PATCH_MODELS)}, got {model!r}")
    cand = list(candidates)
    for size in cand:  # square sizes: PatchCalibration.patch_size gives ints
        if not isinstance(size, int):
            raise InputError(f"candidates must be odd positive integers, got {candidates!r}")
        _patch_shape(size, "candidates")
    if not cand:
        raise InputError("candidates must hold at least one patch size")
    sig = [float(as_sigma(s, 1, dtype=torch.float64)[0]) for s in sigmas]
    if not sig:
        raise InputError("sigmas must hold at least one noise level")
    r2, rmse = [], []
    for s in sig:
        _, target = denoiser_outputs(network, heldout, s, seed=seed, batch_size=batch_size)
        preds = [denoiser_outputs(PATCH_MODELS[model](train, size, backend), heldout, s,
                                  seed=seed, batch_size=batch_size)[1] for size in cand]
        r2.append([r_squared(target, p) for p in preds])
        rmse.append([output_distance(target, p)["rmse"] for p in preds])
    best = [max(range(len(cand)), key=row.__getitem__) for row in r2]
    return PatchCalibration(
        model=model, sigma=sig, candidates=cand, r2=r2, rmse=rmse, best=[cand[k] for k in best],
        best_r2=[row[k] for row, k in zip(r2, best, strict=True)],
        best_rmse=[row[k] for row, k in zip(rmse, best, strict=True)])
