"""Optimal bases of image classes whose optimal denoiser is known (Kadkhodaie, Guth,
Simoncelli & Mallat, ICLR 2024, §4; docs/science.md#adaptive-harmonic-bases).

A bias-free denoiser is f(y) = J(y)·y: it shrinks y along the eigenvectors of its Jacobian.
These functions compare a denoiser with the optimum of each class:

- C^α images: output PSNR grows with input PSNR at slope α/(α+1) for the optimum
  (:func:`optimal_slope`); :func:`psnr_slope` fits a network's slope;
- manifolds (disks, a ray): the optimum projects the noise on the tangent space
  (:class:`TangentProjection`; disk tangents by :func:`disk_tangent_space`), whose span the
  top Jacobian eigenvectors should match (:func:`manifold_alignment`, by
  :func:`principal_angles`);
- a Gaussian: the optimum is linear, J = Σ(Σ + σ²I)⁻¹ (:func:`gaussian_alignment`, at the
  :func:`spectral_gaps` of Σ's spectrum).
"""

from __future__ import annotations

import torch

from .._checks import check_positive_float, check_positive_int, check_tensor
from ..errors import InputError
from ..models.base import Denoiser

__all__ = ["TangentProjection", "add_noise", "disk_tangent_space", "gaussian_alignment",
           "manifold_alignment", "optimal_slope", "principal_angles", "psnr_slope",
           "spectral_gaps", "top_eigenvectors"]


def optimal_slope(alpha: float) -> float:
    """Slope of the optimal output-vs-input PSNR curve of C^α images: α/(α+1)."""
    alpha = check_positive_float(alpha, "alpha")
    return alpha / (alpha + 1)


def psnr_slope(input_psnr, output_psnr, fit_range=None) -> dict:
    """Least-squares line output = slope·input + intercept (dB) over ``fit_range``.

    ``fit_range`` (lo, hi) keeps the points with lo ≤ input PSNR ≤ hi (None: all).
    Returns ``{"slope", "intercept", "points"}`` (points: how many were fitted; ≥ 2).
    """
    x = torch.as_tensor(input_psnr, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(output_psnr, dtype=torch.float64).reshape(-1)
    if x.shape != y.shape:
        raise InputError(f"input_psnr and output_psnr must have the same length, got "
                         f"{x.numel()} and {y.numel()}")
    keep = torch.isfinite(x) & torch.isfinite(y)
    if fit_range is not None:
        lo, hi = (float(v) for v in fit_range)
        if not lo < hi:
            raise InputError(f"fit_range must be (lo, hi) with lo < hi, got {fit_range}")
        keep &= (x >= lo) & (x <= hi)
    if int(keep.sum()) < 2:
        raise InputError(f"need at least 2 finite points inside fit_range={fit_range} to fit "
                         f"a slope, got {int(keep.sum())}; widen fit_range or add PSNR levels")
    x, y = x[keep], y[keep]
    xc = x - x.mean()
    slope = float((xc * (y - y.mean())).sum() / (xc**2).sum())
    return {"slope": slope, "intercept": float(y.mean() - slope * x.mean()),
            "points": int(keep.sum())}


def principal_angles(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spaces of A and B.

    A: [..., d, k], B: [..., d, m] with the same leading dims; returns [..., min(k, m)].
    0 where the spaces share a direction, π/2 for orthogonal ones. Columns need not be
    orthonormal (they are orthonormalised by QR in float64; they must be independent).
    """
    A = check_tensor(A, "A", min_ndim=2)
    B = check_tensor(B, "B", min_ndim=2)
    if A.shape[:-1] != B.shape[:-1]:
        raise InputError(f"A and B must have the same leading shape [..., d, *], got "
                         f"{tuple(A.shape)} and {tuple(B.shape)}")
    Qa = torch.linalg.qr(A.to(torch.float64)).Q
    Qb = torch.linalg.qr(B.to(torch.float64)).Q
    cos = torch.linalg.svdvals(Qa.transpose(-1, -2) @ Qb).clamp(0, 1)  # descending
    return torch.arccos(cos)


def disk_tangent_space(params, size: int, h: float = 1e-6) -> torch.Tensor:
    """Tangent vectors of the disk manifold at ``params`` [n, 5]: ``[n, d, 5]`` float64.

    Column j is (render(p + h·e_j) − render(p − h·e_j)) / 2h, the central finite
    difference of :func:`pydiffgen.data.render_disks` along parameter j (cx, cy, radius,
    foreground, background), d = size². The renderer is smooth in the parameters except
    where a pixel's coverage clamps at 0 or 1; the small step (float64, rounding error
    ≈ 1e-10) makes landing across such a kink unlikely.
    """
    from ..data import render_disks

    params = torch.as_tensor(params, dtype=torch.float64)
    h = check_positive_float(h, "h")
    cols = []
    for j in range(5):
        step = torch.zeros(5, dtype=torch.float64)
        step[j] = h
        diff = render_disks(params + step, size) - render_disks(params - step, size)
        cols.append(diff.reshape(len(params), -1) / (2 * h))
    return torch.stack(cols, dim=2)


class TangentProjection(Denoiser):
    """D(y) = x₀ + P_T (y − x₀): the projection onto the affine tangent space of a manifold
    at one point x₀, the optimal denoiser of that manifold to first order at small σ.

    ``x0`` [*F] and ``tangent`` [d, k]; every image of a batch is projected on the same
    space. Its Jacobian is P_T, so its top k Jacobian
    eigenvectors span the tangent space exactly — the reference that
    :func:`manifold_alignment` is checked against.
    """

    blind = True

    def __init__(self, x0: torch.Tensor, tangent: torch.Tensor):
        super().__init__()
        x0 = check_tensor(x0, "x0", min_ndim=1)
        tangent = check_tensor(tangent, "tangent", ndim=2)
        d = x0.numel()
        if tangent.ndim != 2 or tangent.shape[0] != d:
            raise InputError(f"tangent must have shape [d={d}, k], got {tuple(tangent.shape)}")
        self.register_buffer("x0", x0.to(torch.float64))
        self.register_buffer("basis", torch.linalg.qr(tangent.to(torch.float64)).Q)  # [d, k]

    def forward(self, y: torch.Tensor, sigma=None) -> torch.Tensor:
        y = check_tensor(y, "y", min_ndim=2)
        if tuple(y.shape[1:]) != tuple(self.x0.shape):
            raise InputError(f"y must have shape [B, {', '.join(map(str, self.x0.shape))}], "
                             f"got {tuple(y.shape)}")
        Q = self.basis
        r = (y.to(torch.float64) - self.x0).reshape(len(y), -1)  # [B, d]
        proj = (r @ Q) @ Q.T  # P_T (y − x₀)
        return (self.x0 + proj.reshape(y.shape)).to(y.dtype)


def add_noise(x0: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """x₀ + σz [*x0.shape] with z ~ N(0, I) drawn from ``seed``."""
    g = torch.Generator().manual_seed(seed)  # CPU draws: the same noise on every device
    return x0 + sigma * torch.randn(x0.shape, generator=g, dtype=x0.dtype).to(x0.device)


def manifold_alignment(denoiser, x0: torch.Tensor, tangent: torch.Tensor, sigma: float, *,
                       seed: int = 0) -> dict:
    """How well ``denoiser``'s top Jacobian eigenvectors span a manifold's tangent space.

    At y = x₀ + σ·z (z seeded), the top k = tangent.shape[2] eigenvectors of J(y) are
    compared with the tangent space at x₀ by principal angles; a random k-dimensional
    subspace (same seed) gives the baseline. Also the effective dimensionality tr J (a
    Hutchinson estimate: the top-k spectrum is matrix-free) and the summed squared error
    ‖D(y) − x₀‖² / σ² (k for the optimum at small σ).

    x0: [n, *F] clean points on the manifold; tangent: [n, d, k]. Returns lists over the
    n images: ``angles_deg`` [n][k], ``random_angles_deg`` [n][k], ``trace`` [n],
    ``mse_over_sigma2`` [n], ``eigenvalues`` [n][k].
    """
    from .spectrum import jacobian_spectrum

    x0 = check_tensor(x0, "x0", min_ndim=2)
    tangent = check_tensor(tangent, "tangent", ndim=3)
    sigma = check_positive_float(sigma, "sigma")
    n, k = tangent.shape[0], tangent.shape[2]
    tangent = tangent.cpu()
    y = add_noise(x0.to(torch.float32), sigma, seed)  # on x0's device
    spec = jacobian_spectrum(denoiser, y, sigma, k=k)
    E = spec.eigenvectors[..., :k].cpu()  # [n, d, k]
    angles = principal_angles(E, tangent)
    g = torch.Generator().manual_seed(seed + 1)
    rand = torch.randn(tangent.shape, generator=g, dtype=torch.float64)
    rand_angles = principal_angles(rand, tangent)
    with torch.no_grad():
        out = denoiser(y, torch.full((n,), sigma, device=y.device))
    err = ((out.double() - x0.double()) ** 2).reshape(n, -1).sum(1).cpu()
    return {
        "sigma": sigma,
        "k": k,
        "angles_deg": torch.rad2deg(angles).tolist(),
        "random_angles_deg": torch.rad2deg(rand_angles).tolist(),
        "trace": spec.trace.to(torch.float64).tolist(),
        "mse_over_sigma2": (err / sigma**2).tolist(),
        "eigenvalues": spec.eigenvalues[..., :k].to(torch.float64).tolist(),
    }


def spectral_gaps(eigenvalues, k_max: int, rel_gap: float = 1e-3) -> list[int]:
    """The k ≤ k_max at which a descending spectrum has a gap λ_k − λ_{k+1} > rel_gap·λ_1.

    Top-k eigenspaces are only defined at such k: a stationary Gaussian's covariance has
    repeated eigenvalues (±ω and rotated frequencies share one).
    """
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).reshape(-1)
    k_max = min(check_positive_int(k_max, "k_max"), lam.numel() - 1)
    scale = float(lam[0].abs().clamp_min(1e-300))
    return [k for k in range(1, k_max + 1) if float(lam[k - 1] - lam[k]) > rel_gap * scale]


def gaussian_alignment(denoiser, reference, y: torch.Tensor, sigma: float, *,
                       k_max: int = 16) -> dict:
    """Jacobian of ``denoiser`` at ``y`` [n, *F] vs the exact Gaussian optimum.

    ``reference``: a :class:`pydiffgen.analysis.GaussianDenoiser` with covariance Σ = UΛUᵀ;
    its Jacobian is W = U diag(λ/(λ+σ²)) Uᵀ at every y. Returns per image:

    - ``rel_error``: ‖J − W‖_F / ‖W‖_F;
    - ``diagonality``: ‖diag(M)‖² / ‖M‖_F² for M = Uᵀ(J − (tr J/d)·I)U, the share of
      J's anisotropic part that acts along the covariance eigenvectors without mixing
      them (1 for the optimum; small for a J with an unrelated basis);
    - ``shrinkage`` [n][d]: u_iᵀ J u_i, the factor J applies along each covariance
      eigenvector, beside ``optimal_shrinkage`` λ_i/(λ_i+σ²);
    - ``angles_deg`` {k: [n]} and ``overlap`` {k: [n]}: the largest principal angle and
      the mean squared cosine between the top-k eigenspaces of J and Σ at every
      spectral gap k ≤ ``k_max`` (the top eigenvectors of J are only well defined where
      its eigenvalues are separated: at small σ the optimum's cluster near 1);
    - the top eigenvalues of J beside λ/(λ+σ²), tr J and the asymmetry of J.
    """
    from .jacobian import jacobian
    from .spectrum import jacobian_spectrum

    y = check_tensor(y, "y", min_ndim=2)
    sigma = check_positive_float(sigma, "sigma")
    n = y.shape[0]
    W, _ = reference.weight(sigma)  # [d, d] float64
    lam, U = reference.eigenvalues, reference.eigenvectors  # descending
    W, lam, U = W.cpu(), lam.cpu(), U.cpu()
    J = jacobian(denoiser, y, sigma).to(torch.float64).cpu()  # [n, d, d]
    rel = torch.linalg.norm(J - W, dim=(1, 2)) / torch.linalg.norm(W)
    spec = jacobian_spectrum(denoiser, y, sigma)
    E = spec.eigenvectors.to(torch.float64).cpu()
    C = U.T @ J @ U  # [n, d, d]: J in the covariance eigenbasis
    shrink = C.diagonal(dim1=1, dim2=2)  # [n, d]
    # the isotropic part (tr J/d)·I is diagonal in every basis: judge the rest
    A = shrink - shrink.mean(1, keepdim=True)  # diagonal of C − (tr J/d)·I
    off = (C**2).sum((1, 2)) - (shrink**2).sum(1)
    diagonality = (A**2).sum(1) / ((A**2).sum(1) + off).clamp_min(1e-300)
    ks = spectral_gaps(lam, k_max)
    angles, overlap = {}, {}
    for k in ks:
        theta = principal_angles(E[..., :k], U[:, :k].expand(n, -1, -1))  # [n, k]
        angles[str(k)] = torch.rad2deg(theta.amax(-1)).tolist()
        overlap[str(k)] = (theta.cos() ** 2).mean(-1).tolist()
    top = min(k_max, lam.numel())
    return {
        "sigma": sigma,
        "rel_error": rel.tolist(),
        "diagonality": diagonality.tolist(),
        "shrinkage": shrink.tolist(),
        "optimal_shrinkage": (lam / (lam + sigma**2)).tolist(),
        "angles_deg": angles,
        "overlap": overlap,
        "eigenvalues": spec.eigenvalues[..., :top].to(torch.float64).tolist(),
        "optimal_eigenvalues": (lam[:top] / (lam[:top] + sigma**2)).tolist(),
        "asymmetry": spec.asymmetry.to(torch.float64).tolist(),
        "trace": spec.trace.to(torch.float64).tolist(),
        "optimal_trace": float((lam / (lam + sigma**2)).sum()),
    }


def top_eigenvectors(model, x0: torch.Tensor, sigmas, k: int) -> dict:
    """Top-k Jacobian eigenvectors and eigenvalues of ``model`` at x₀ + σz for each σ (z
    seeded per σ), for figures: x0 [1, *F] -> {"σ": {"eigenvalues" [k],
    "vectors" [k, *F]}}."""
    from .spectrum import jacobian_spectrum

    out = {}
    for i, s in enumerate(sigmas):
        spec = jacobian_spectrum(model, add_noise(x0, s, 1000 + i), s, k=k)
        vecs = spec.eigenvectors[0, :, :k].T.reshape(k, *x0.shape[1:])
        out[f"{s:g}"] = {"eigenvalues": spec.eigenvalues[0, :k].cpu().tolist(),
                         "vectors": vecs.to(torch.float32).cpu().tolist()}
    return out
