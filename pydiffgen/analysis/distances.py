"""Comparing denoisers: linearity score and per-σ distances (Li, Dai & Qu, NeurIPS 2024, §3).

- Linearity score (Li et al. Eq. 8): with noisy images y1, y2 at noise level σ and
  α² + β² = 1 (so α y1 + β y2 is again an image at noise level σ),
      LS(σ) = mean |cos(D(α y1 + β y2; σ), α D(y1; σ) + β D(y2; σ))|.
  1 for a linear map (and, by scale invariance of the cosine, for a constant one).
- Score difference (Li et al. §3.1): RMSE = mean sqrt(‖D1 − D2‖²/d) and
  NMSE = mean ‖D1 − D2‖ / ‖D1‖ over noisy versions x + σ n of a set of images, with the
  same noise n per image at every σ (seeded), so the curves are smooth in σ.
"""

from __future__ import annotations

import math

import torch

from .._checks import as_sigma, check_positive_int, check_tensor
from ..errors import InputError

__all__ = ["denoiser_distance", "denoiser_outputs", "linearity_score", "output_distance"]


def _check_denoiser(D, name):
    if not callable(D):
        raise InputError(f"{name} must be callable as {name}(y, sigma), got {type(D).__name__}")


@torch.no_grad()
def _apply(D, y: torch.Tensor, sigma: float, batch_size: int) -> torch.Tensor:
    """D(y; σ) over batches, eval mode, float32 output of y's shape."""
    module = D if isinstance(D, torch.nn.Module) else None
    was_training = module is not None and module.training
    if was_training:
        module.eval()
    try:
        outs = []
        for s in range(0, len(y), batch_size):
            yb = y[s : s + batch_size]
            out = D(yb, torch.full((len(yb),), sigma, dtype=yb.dtype, device=yb.device))
            if not isinstance(out, torch.Tensor) or out.shape != yb.shape:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise InputError(f"denoiser returned {got} for an input of shape {tuple(yb.shape)}")
            outs.append(out.to(y.dtype))
        return torch.cat(outs)
    finally:
        if was_training:
            module.train()


def fixed_noise(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Standard normal noise of ``x``'s shape from ``seed`` (drawn on the CPU in float32)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, generator=gen, dtype=torch.float32).to(x.device, x.dtype)


def denoiser_outputs(denoiser, x, sigma: float, *, seed: int = 0,
                     batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, D(y; σ))`` with y = x + σ n and n the fixed noise of ``seed`` ([M, *F] each)."""
    x = check_tensor(x, "x", min_ndim=2)
    _check_denoiser(denoiser, "denoiser")
    sigma = as_sigma(sigma, 1, dtype=torch.float64)[0].item()
    y = x + sigma * fixed_noise(x, seed)
    return y, _apply(denoiser, y, sigma, check_positive_int(batch_size, "batch_size"))


def output_distance(D1: torch.Tensor, D2: torch.Tensor) -> dict:
    """RMSE = mean sqrt(‖D1 − D2‖²/d) and NMSE = mean ‖D1 − D2‖/‖D1‖ of two outputs [M, *F]."""
    if D1.shape != D2.shape:
        raise InputError(f"outputs must have the same shape, got {tuple(D1.shape)} and "
                         f"{tuple(D2.shape)}")
    a = D1.reshape(len(D1), -1).to(torch.float64)
    b = D2.reshape(len(D2), -1).to(torch.float64)
    diff = (a - b).norm(dim=1)  # [M]
    return {
        "rmse": float((diff / math.sqrt(a.shape[1])).mean()),
        "nmse": float((diff / a.norm(dim=1).clamp_min(1e-300)).mean()),
    }


def denoiser_distance(D1, D2, x, sigmas, *, seed: int = 0, batch_size: int = 256) -> dict:
    """Per-σ distance between two denoisers on noisy versions of ``x`` [M, *F].

    D1, D2: any callables ``D(y [B, *F], sigma [B]) -> [B, *F]`` (network, LinearDenoiser,
    GaussianDenoiser, empirical optimum ...). Both see the same y = x + σ n (noise n fixed
    per image by ``seed``). NMSE is normalised by ‖D1‖.
    Returns ``{"sigma": [S], "rmse": [S], "nmse": [S]}`` (lists of floats).
    """
    x = check_tensor(x, "x", min_ndim=2)
    _check_denoiser(D1, "D1")
    _check_denoiser(D2, "D2")
    sig = _sigmas(sigmas)
    batch_size = check_positive_int(batch_size, "batch_size")
    noise = fixed_noise(x, seed)
    out = {"sigma": sig, "rmse": [], "nmse": []}
    for s in sig:
        y = x + s * noise
        dist = output_distance(_apply(D1, y, s, batch_size), _apply(D2, y, s, batch_size))
        out["rmse"].append(dist["rmse"])
        out["nmse"].append(dist["nmse"])
    return out


def _sigmas(sigmas) -> list[float]:
    if isinstance(sigmas, (int, float)) or (isinstance(sigmas, torch.Tensor) and sigmas.ndim == 0):
        sigmas = [float(sigmas)]
    sig = [float(s) for s in sigmas]
    if not sig:
        raise InputError("sigmas must hold at least one noise level")
    if not all(math.isfinite(s) and s > 0 for s in sig):
        raise InputError(f"sigmas must be positive and finite, got {sig}")
    return sig


def linearity_score(denoiser, x, sigma: float, alpha: float = 1 / math.sqrt(2), *,
                    form: str = "cosine", n_pairs: int | None = None, seed: int = 0,
                    batch_size: int = 256) -> float:
    """Li et al.'s linearity score of ``denoiser`` at ``sigma`` on pairs of images from ``x``.

    Pairs are (x[2i], x[2i+1]) after a seeded shuffle (``n_pairs`` of them, default all
    ⌊M/2⌋), noised with fixed noise: y_k = x_k + σ n_k. With β = sqrt(1 − α²):
      form="cosine": mean |cos(D(α y1 + β y2), α D(y1) + β D(y2))| — 1 for a linear map;
      form="nmse":   mean ‖D(α y1 + β y2) − (α D(y1) + β D(y2))‖ / ‖α D(y1) + β D(y2)‖ —
                     0 for a linear map.
    """
    x = check_tensor(x, "x", min_ndim=2)
    _check_denoiser(denoiser, "denoiser")
    sigma = as_sigma(sigma, 1, dtype=torch.float64)[0].item()
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
        raise InputError(f"alpha must be a number in (0, 1] (beta = sqrt(1 - alpha^2)), "
                         f"got {alpha!r}")
    if form not in ("cosine", "nmse"):
        raise InputError(f"form must be 'cosine' or 'nmse', got {form!r}")
    if len(x) < 2:
        raise InputError(f"x needs at least 2 images to form a pair, got {len(x)}")
    max_pairs = len(x) // 2
    n_pairs = max_pairs if n_pairs is None else check_positive_int(n_pairs, "n_pairs")
    if n_pairs > max_pairs:
        raise InputError(f"n_pairs must be <= {max_pairs} (M // 2 for M={len(x)}), got {n_pairs}")
    batch_size = check_positive_int(batch_size, "batch_size")
    alpha = float(alpha)
    beta = math.sqrt(max(0.0, 1.0 - alpha * alpha))
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=gen)[: 2 * n_pairs].to(x.device)
    y = x[perm] + sigma * fixed_noise(x[perm], seed + 1)
    y1, y2 = y[0::2], y[1::2]  # [P, *F]
    D1 = _apply(denoiser, y1, sigma, batch_size)
    D2 = _apply(denoiser, y2, sigma, batch_size)
    D12 = _apply(denoiser, alpha * y1 + beta * y2, sigma, batch_size)
    # Li et al. Eq. 8: compare D(αy1 + βy2) with αD(y1) + βD(y2)
    lin = (alpha * D1 + beta * D2).reshape(n_pairs, -1).to(torch.float64)
    mix = D12.reshape(n_pairs, -1).to(torch.float64)
    if form == "cosine":
        cos = torch.nn.functional.cosine_similarity(mix, lin, dim=1, eps=1e-300)
        return float(cos.abs().mean())
    return float(((mix - lin).norm(dim=1) / lin.norm(dim=1).clamp_min(1e-300)).mean())
