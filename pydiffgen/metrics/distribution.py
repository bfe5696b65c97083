"""Distances between two feature distributions: Fréchet distance and kernel distance.

- FD (Heusel et al. 2017, the FID formula on any encoder's features):
  ‖μ₁ − μ₂‖² + tr C₁ + tr C₂ − 2 tr (C₁^{1/2} C₂ C₁^{1/2})^{1/2}, in float64. The usual
  code takes ``scipy.linalg.sqrtm(C₁ C₂)`` of a non-symmetric product (complex round-off,
  slow); its trace equals that of the square root of the symmetric PSD matrix
  C₁^{1/2} C₂ C₁^{1/2}, whose eigenvalues a symmetric eigen-decomposition gives exactly
  to float64.
- KID (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (⟨x, y⟩/F + 1)³, averaged over random subsets (a seeded generator), as in
  dgm-eval / torch-fidelity.
"""

from __future__ import annotations

from functools import partial

import torch

from .._checks import check_positive_int
from .bootstrap import confidence_interval
from .inputs import agree, as_features


def mean_cov(x: torch.Tensor, chunk: int = 1 << 14) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 mean [F] and unbiased covariance [F, F] of x [N ≥ 2, F], in row chunks
    (no float64 copy of x)."""
    mu = x.double().mean(0) if x.shape[0] <= chunk else sum(
        c.double().sum(0) for c in x.split(chunk)) / x.shape[0]
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for c in x.split(chunk):
        xc = c.double() - mu
        cov += xc.T @ xc
    return mu, cov / (x.shape[0] - 1)


def psd_sqrt(c: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric PSD matrix [F, F] (negative round-off
    eigenvalues clipped to 0)."""
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(real, fake, *, ci: float | None = None, n_boot: int = 100,
                     seed: int = 0) -> float:
    """Fréchet distance between Gaussians fitted to real [N ≥ 2, F] and fake [M ≥ 2, F].
    ``ci``: a level (e.g. 0.95) returns an ``Estimate`` with its interval
    (``confidence_interval``, ``n_boot`` half-samples seeded with ``seed``)."""
    if ci is not None:
        return confidence_interval(frechet_distance, real, fake, ci=ci, n_boot=n_boot,
                                   seed=seed)
    real = as_features(real, "real", min_rows=2)
    fake = as_features(fake, "fake", min_rows=2)
    real, fake = agree(real=real, fake=fake)
    mu1, c1 = mean_cov(real)
    mu2, c2 = mean_cov(fake)
    s1 = psd_sqrt(c1)
    inner = s1 @ c2 @ s1
    inner = (inner + inner.T) / 2  # exactly symmetric for eigvalsh
    tr_sqrt = torch.linalg.eigvalsh(inner).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + c1.trace() + c2.trace() - 2 * tr_sqrt)


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² of x [m, F] and y [m, F] with k(a, b) = (⟨a, b⟩/F + 1)³, float64."""
    x, y = x.double(), y.double()
    m, F = x.shape
    kxx = (x @ x.T / F + 1) ** 3
    kyy = (y @ y.T / F + 1) ** 3
    kxy = (x @ y.T / F + 1) ** 3
    off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(off - 2 * kxy.sum() / (m * m))


def kernel_distance(real, fake, subsets: int = 100, subset_size: int = 1000, *,
                    seed: int = 0, ci: float | None = None, n_boot: int = 100) -> float:
    """KID: mean over ``subsets`` draws of the unbiased polynomial MMD² between
    min(subset_size, N, M) real and as many fake rows drawn without replacement, from a
    torch generator seeded with ``seed``. real [N ≥ 2, F], fake [M ≥ 2, F]. ``ci``: a
    level returns an ``Estimate`` (``confidence_interval``, ``n_boot`` half-samples)."""
    if ci is not None:
        kid = partial(kernel_distance, subsets=subsets, subset_size=subset_size, seed=seed)
        return confidence_interval(kid, real, fake, ci=ci, n_boot=n_boot, seed=seed)
    check_positive_int(subsets, "subsets")
    check_positive_int(subset_size, "subset_size", minimum=2)
    real = as_features(real, "real", min_rows=2)
    fake = as_features(fake, "fake", min_rows=2)
    real, fake = agree(real=real, fake=fake)
    m = min(subset_size, real.shape[0], fake.shape[0])
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(subsets):
        i = torch.randperm(real.shape[0], generator=gen)[:m].to(real.device)
        j = torch.randperm(fake.shape[0], generator=gen)[:m].to(fake.device)
        total += polynomial_mmd2(real[i], fake[j])
    return total / subsets
