"""Peak signal-to-noise ratio and denoising PSNR curves (output PSNR vs input PSNR)."""

from __future__ import annotations

import math

import torch

from .._checks import check_positive_float, check_tensor
from ..errors import InputError


def psnr(x, ref, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB: 10 log10(range² / MSE). x, ref: [B, *F] -> [B].

    ``data_range`` is 2 for pydiffgen's [-1, 1] images. Identical images give +inf.
    """
    check_tensor(x, "x", min_ndim=1)
    check_tensor(ref, "ref", min_ndim=1)
    if x.shape != ref.shape:
        raise InputError(
            f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}"
        )
    data_range = check_positive_float(data_range, "data_range")
    mse = ((x.double() - ref.double()) ** 2).reshape(len(x), -1).mean(1)
    return (10 * torch.log10(data_range**2 / mse)).float()


def sigma_for_psnr(input_psnr: float, data_range: float = 2.0) -> float:
    """The noise σ whose expected input PSNR is ``input_psnr`` dB (MSE = σ²)."""
    return data_range * 10 ** (-input_psnr / 20)


@torch.no_grad()
def denoising_psnr_curve(denoiser, images, sigmas, *, seed: int = 0, batch_size: int = 256,
                         data_range: float = 2.0):
    """Mean output PSNR of ``denoiser`` on ``images`` [B, *F] noised at each σ.

    The same noise draw (from ``seed``) is reused at every σ, so curves of different
    models and image sets are paired. Returns dict(sigma, input_psnr, output_psnr) lists.
    """
    check_tensor(images, "images", min_ndim=2)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(images.shape, generator=g).to(images.device, images.dtype)
    out_psnr, in_psnr = [], []
    for s in sigmas:
        s = check_positive_float(s, "sigmas")
        vals = []
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size]
            y = x + s * z[i : i + batch_size]
            sig = torch.full((len(x),), s, device=x.device, dtype=x.dtype)
            vals.append(psnr(denoiser(y, sig).clamp(-1e6, 1e6), x, data_range))
        out_psnr.append(float(torch.cat(vals).mean()))
        in_psnr.append(20 * math.log10(data_range / s))
    return {"sigma": [float(s) for s in sigmas], "input_psnr": in_psnr, "output_psnr": out_psnr}
