"""Optimal bases of synthetic image classes (Kadkhodaie, Guth, Simoncelli & Mallat, ICLR
2024, §4; SCIENCE.md §1).

A bias-free denoiser is f(y) = J(y)·y: it shrinks y along the eigenvectors e_k(y) of its
Jacobian by the eigenvalues λ_k. For image classes whose optimal denoiser is known, the
paper checks that a trained network finds the optimal basis:

- **C^α images** (two C^α backgrounds separated by a C^α contour): the optimal MSE decays
  like σ^(2α/(α+1)), so output PSNR grows with input PSNR at slope α/(α+1); we fit the
  slope of the trained network's output-vs-input PSNR curve over ``fit_range``.
- **Disks** (5 parameters: centre, radius, two intensities): near the manifold the optimum
  projects the noise onto its 5-dimensional tangent space, so MSE ≈ 5σ² (summed over the
  d pixels: 5σ²/d per pixel) and the top 5 Jacobian eigenvectors span the tangent space.
  We measure the principal angles between the two subspaces (tangent vectors by central
  finite differences of :func:`pydiffgen.data.render_disks`).
- **Ray** (one image under positive rescalings): a 1-dimensional manifold, MSE ≈ σ², and
  the top eigenvector is the image's direction.
- **Gaussian** (stationary, known covariance Σ): the optimum is linear, J = Σ(Σ + σ²I)⁻¹,
  whose eigenvectors are Σ's; :class:`pydiffgen.analysis.GaussianDenoiser` is the exact
  reference the network is compared with.

The slope fit range (``fit_range``, default 6–24 dB input PSNR, fixed before any run):
the rate is asymptotic, and a pixel grid bounds it on both sides — at high noise the
output saturates (the contour itself is lost), at low noise the optimum keeps nearly
every pixel (slope → 1) and a network trained with σ = U²·σ_max rarely sees that noise.
The report shows the whole curve with the fitted line.

Every trained model (``models/<key>``) and every analysis (``analysis/<key>.json``) is
stored as soon as it exists, so a rerun with the same config resumes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import config as cfgmod
from .._checks import check_positive_float, check_positive_int, check_tensor
from ..errors import ConfigError, InputError
from ..io import read_json, write_json
from ..models.base import Denoiser
from ._runs import claim_run_directory, torch_threads

__all__ = ["EXPERIMENTS", "OptimalBasisConfig", "PRESETS", "TangentProjection",
           "disk_tangent_space", "gaussian_alignment", "manifold_alignment", "optimal_basis",
           "optimal_slope", "plan", "preset", "principal_angles", "psnr_slope",
           "spectral_gaps", "write_optimal_basis_report"]

EXPERIMENTS = ("calpha", "disks", "ray", "gaussian")


# ---------------------------------------------------------------------------- analysis


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


def _noisy(x0: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
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
    from ..analysis import jacobian_spectrum

    x0 = check_tensor(x0, "x0", min_ndim=2)
    tangent = check_tensor(tangent, "tangent", ndim=3)
    sigma = check_positive_float(sigma, "sigma")
    n, k = tangent.shape[0], tangent.shape[2]
    tangent = tangent.cpu()
    y = _noisy(x0.to(torch.float32), sigma, seed)  # on x0's device
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
    from ..analysis import jacobian, jacobian_spectrum

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


# ---------------------------------------------------------------------------- experiment


@dataclass(frozen=True)
class OptimalBasisConfig:
    """One run. CLI flags map 1:1 to these fields (``pydiffgen optimal-basis --help``)."""

    name: str = field(default="optimal-basis", metadata={"help": "run name; output in runs/<name>"})
    experiments: tuple[str, ...] = field(
        default=("calpha", "disks", "ray", "gaussian"),
        metadata={"help": f"which to run: {', '.join(EXPERIMENTS)}"})
    size: int = field(default=16, metadata={"help": "image size of C^α, disks and ray"})
    alphas: tuple[float, ...] = field(default=(1.0, 2.0, 4.0),
                                      metadata={"help": "C^α regularities, one model each"})
    n_train: int = field(default=4096, metadata={"help": "training images per model"})
    n_eval: int = field(default=64, metadata={"help": "held-out images per PSNR curve / MSE"})
    levels: int = field(default=2, metadata={"help": "bias-free UNet levels"})
    width: int = field(default=16, metadata={"help": "bias-free UNet width"})
    steps: int = field(default=1000, metadata={"help": "training steps per model"})
    batch_size: int = 32
    lr: float = 1e-3
    psnr_levels: tuple[float, ...] = field(
        default=(0.0, 3.0, 6.0, 9.0, 12.0, 15.0, 18.0, 21.0, 24.0, 27.0, 30.0),
        metadata={"help": "input PSNRs (dB) of the C^α curves"})
    fit_range: tuple[float, ...] = field(
        default=(6.0, 24.0), metadata={"help": "input PSNR range (dB) of the slope fit"})
    sigmas: tuple[float, ...] = field(
        default=(0.05, 0.1, 0.2, 0.4),
        metadata={"help": "noise levels of the Jacobian analyses (images in [-1, 1])"})
    jacobian_images: int = field(default=4, metadata={"help": "images per Jacobian analysis"})
    gaussian_size: int = field(default=16, metadata={"help": "image size of the Gaussian "
                                                             "experiment (dense d×d Jacobians)"})
    gaussian_exponent: float = 2.0
    seed: int = 0
    threads: int | None = field(
        default=1, metadata={"help": "torch CPU threads (none: leave torch's setting)"})
    device: str = "cpu"

    def __post_init__(self):
        for name in ("size", "n_train", "n_eval", "levels", "width", "steps", "batch_size",
                     "jacobian_images", "gaussian_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {v!r}")
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if not self.experiments or unknown:
            raise ConfigError(f"experiments must be among {', '.join(EXPERIMENTS)}, got "
                              f"{self.experiments}")
        for name, s in (("size", self.size), ("gaussian_size", self.gaussian_size)):
            if s % 2**self.levels:
                raise ConfigError(f"{name}={s} must be a multiple of 2**levels = "
                                  f"{2**self.levels} (the UNet pools {self.levels} times)")
        if self.size < 8:
            raise ConfigError(f"size must be >= 8, got {self.size}")
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise ConfigError(f"alphas must be positive numbers, got {self.alphas}")
        if not self.sigmas or any(not s > 0 for s in self.sigmas):
            raise ConfigError(f"sigmas must be positive numbers, got {self.sigmas}")
        if len(self.fit_range) != 2 or not self.fit_range[0] < self.fit_range[1]:
            raise ConfigError(f"fit_range must be lo,hi with lo < hi, got {self.fit_range}")
        inside = [p for p in self.psnr_levels if self.fit_range[0] <= p <= self.fit_range[1]]
        if len(inside) < 2:
            raise ConfigError(f"at least 2 psnr_levels must lie in fit_range={self.fit_range}, "
                              f"got {self.psnr_levels}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or none, got {self.threads}")


PRESETS: dict[str, OptimalBasisConfig] = {
    # a smoke run: 16×16, three short trainings (C^α α = 1, 4 and disks)
    "quick": OptimalBasisConfig(
        name="optimal-basis-quick", experiments=("calpha", "disks", "gaussian"), size=16,
        alphas=(1.0, 4.0), n_train=1024, steps=300, jacobian_images=2,
        sigmas=(0.1, 0.4), gaussian_size=8),
    # the paper's four regularities at 32×32 with longer training (not timed here: 7
    # models × 6000 steps of a width-32 UNet, hours on a 2-core CPU; meant for a GPU)
    "paper": OptimalBasisConfig(
        name="optimal-basis-paper", size=32, alphas=(1.0, 2.0, 3.0, 5.0), n_train=20000,
        width=32, steps=6000, batch_size=64, device="cuda"),
}


def preset(name: str) -> OptimalBasisConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def _model_keys(c: OptimalBasisConfig) -> list[str]:
    keys = []
    for e in c.experiments:
        if e == "calpha":
            keys += [f"calpha_a{a:g}" for a in c.alphas]
        else:
            keys.append(e)
    return keys


def plan(config: OptimalBasisConfig) -> str:
    c = config
    keys = _model_keys(c)
    lines = [
        f"optimal basis {c.name!r}: {len(keys)} bias-free UNets (levels {c.levels}, width "
        f"{c.width}), {c.steps} steps × batch {c.batch_size} on {c.n_train} images each: "
        + ", ".join(keys),
    ]
    if "calpha" in c.experiments:
        alphas = ", ".join(f"{a:g}" for a in c.alphas)
        lines.append(f"  C^alpha {c.size}x{c.size}, alpha = {alphas}:"
                     f" output vs input PSNR at {len(c.psnr_levels)} levels on {c.n_eval} "
                     f"held-out images, slope fitted over {c.fit_range[0]:g}-{c.fit_range[1]:g}"
                     " dB vs alpha/(alpha+1)")
    for e, k in (("disks", 5), ("ray", 1)):
        if e in c.experiments:
            lines.append(f"  {e} {c.size}x{c.size}: top-{k} Jacobian eigenvectors vs the tangent "
                         f"space on {c.jacobian_images} images at sigma = "
                         f"{', '.join(f'{s:g}' for s in c.sigmas)}; MSE/sigma^2 vs {k}")
    if "gaussian" in c.experiments:
        lines.append(f"  gaussian {c.gaussian_size}x{c.gaussian_size} (spectrum 1/|w|^"
                     f"{c.gaussian_exponent:g}): Jacobian vs Sigma(Sigma + sigma^2 I)^-1 "
                     f"on {c.jacobian_images} images per sigma")
    return "\n".join(lines)


def _dataset(config: OptimalBasisConfig, key: str, n: int, seed: int):
    """(images, info) of experiment ``key``; evaluation sets use another seed than training."""
    from ..data import load

    if key.startswith("calpha_a"):
        return load("calpha", n=n, size=config.size, alpha=float(key[len("calpha_a"):]),
                    seed=seed, return_info=True)
    if key == "gaussian":
        return load("gaussian", n=n, size=config.gaussian_size,
                    exponent=config.gaussian_exponent, seed=seed, return_info=True)
    if key == "ray":  # the same direction x₀ (its seed) for training and evaluation
        x, info = load("ray", n=n, size=config.size, seed=config.seed, return_info=True)
        if seed != config.seed:
            g = torch.Generator().manual_seed(seed)
            a = 0.1 + 0.9 * torch.rand(n, generator=g)
            x = (a[:, None, None, None] * info["direction"]).contiguous()
            info = {**info, "scales": a}
        return x, info
    return load(key, n=n, size=config.size, seed=seed, return_info=True)


def _train(config: OptimalBasisConfig, out: Path, key: str, progress, log):
    from .. import checkpoint, models, training

    run = out / "models" / key
    if (run / "model.json").exists():
        return checkpoint.load_model(run, device=config.device)
    x, _ = _dataset(config, key, config.n_train, config.seed)
    torch.manual_seed(config.seed)
    model = models.build("bf_unet", channels=x.shape[1], levels=config.levels,
                         width=config.width)
    tc = training.TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                              sigma_dist="kadkhodaie", sigma_max=2.0, seed=config.seed,
                              device=config.device)
    log(f"[optimal-basis] {key}: training bf_unet on {len(x)} images, {config.steps} steps")
    result = training.train(model, x, tc, out_dir=run, resume=True, progress=progress)
    m = result.ema if result.ema is not None else result.model
    return m.eval().to(config.device)


def _cached(out: Path, key: str, resume: bool, log, compute):
    path = out / "analysis" / f"{key}.json"
    if resume and path.exists():
        log(f"[optimal-basis] {key}: analysis done earlier, loading {path}")
        return read_json(path)
    value = compute()
    write_json(path, value)
    return value


def _analyse_calpha(config, model, key):
    from ..metrics import denoising_psnr_curve, sigma_for_psnr

    alpha = float(key[len("calpha_a"):])
    x, _ = _dataset(config, key, config.n_eval, config.seed + 1)
    sigmas = [sigma_for_psnr(p) for p in config.psnr_levels]
    curve = denoising_psnr_curve(model, x.to(config.device), sigmas, seed=config.seed)
    fit = psnr_slope(curve["input_psnr"], curve["output_psnr"], config.fit_range)
    return {"alpha": alpha, "optimal_slope": optimal_slope(alpha), **fit,
            "fit_range": list(config.fit_range), "curve": curve}


def _analyse_manifold(config, model, key):
    from ..data import render_disks

    x, info = _dataset(config, key, max(config.n_eval, config.jacobian_images), config.seed + 1)
    n = config.jacobian_images
    if key == "disks":
        params = info["params"].to(torch.float64)
        x0 = render_disks(params, config.size).to(torch.float32)
        tangent = disk_tangent_space(params[:n], config.size)
    else:  # ray: the tangent of {a·x₀} at a·x₀ is x₀
        x0 = x
        tangent = info["direction"].reshape(1, -1, 1).to(torch.float64).expand(n, -1, -1)
    x0 = x0.to(config.device)
    per_sigma = []
    for i, s in enumerate(config.sigmas):
        a = manifold_alignment(model, x0[:n], tangent, s, seed=config.seed + i)
        # MSE over the larger evaluation set (no Jacobian needed)
        y = _noisy(x0, s, config.seed + 100 + i)
        with torch.no_grad():
            out = model(y, torch.full((len(y),), s, device=y.device))
        err = ((out.double() - x0.double()) ** 2).reshape(len(y), -1).sum(1).cpu() / s**2
        a["mse_over_sigma2_eval"] = float(err.mean())
        per_sigma.append(a)
    k = tangent.shape[2]
    eig = _top_eigenvectors(model, x0[:1], config.sigmas, k + 3)
    return {"k": k, "d": x0[0].numel(), "per_sigma": per_sigma, "example": x0[0].cpu().tolist(),
            "example_tangent": tangent[0].T.reshape(k, *x0.shape[1:]).tolist(),
            "eigenvectors": eig}


def _top_eigenvectors(model, x0, sigmas, k):
    """Top-k Jacobian eigenvectors and eigenvalues at x₀ + σz for each σ (for the figures)."""
    from ..analysis import jacobian_spectrum

    out = {}
    for i, s in enumerate(sigmas):
        spec = jacobian_spectrum(model, _noisy(x0, s, 1000 + i), s, k=k)
        vecs = spec.eigenvectors[0, :, :k].T.reshape(k, *x0.shape[1:])
        out[f"{s:g}"] = {"eigenvalues": spec.eigenvalues[0, :k].cpu().tolist(),
                         "vectors": vecs.to(torch.float32).cpu().tolist()}
    return out


def _analyse_gaussian(config, model):
    from ..analysis import GaussianDenoiser
    from ..data import gaussian_params

    size = config.gaussian_size
    mean, cov = gaussian_params(size, exponent=config.gaussian_exponent)
    G = GaussianDenoiser.from_moments(mean, cov, shape=(1, size, size))
    x, _ = _dataset(config, "gaussian", config.jacobian_images, config.seed + 1)
    x = x.to(config.device)
    G_dev = GaussianDenoiser.from_moments(mean, cov, shape=(1, size, size)).to(config.device)
    per_sigma = []
    for i, s in enumerate(config.sigmas):
        y = _noisy(x, s, config.seed + i)
        net = gaussian_alignment(model, G, y, s)
        exact = gaussian_alignment(G_dev, G, y.double(), s)
        per_sigma.append({"sigma": s, "network": net, "optimum": exact})
    k = 8
    U = G.eigenvectors[:, :k].T.reshape(k, 1, size, size)
    return {"d": size * size, "per_sigma": per_sigma,
            "covariance_eigenvalues": G.eigenvalues[:k].tolist(),
            "covariance_eigenvectors": U.to(torch.float32).tolist(),
            "eigenvectors": _top_eigenvectors(model, x[:1], config.sigmas, k)}


def optimal_basis(config: OptimalBasisConfig, out_dir=None, *, resume: bool = True,
                  progress: bool = True, log=None) -> dict:
    """Run (or resume) the experiments; write ``results.json`` and ``report.html``."""
    out = Path(out_dir) if out_dir is not None else Path("runs") / config.name
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    claim_run_directory(out, config, resume, "optimal-basis run")
    t0 = time.perf_counter()
    with torch_threads(config.threads):
        for key in _model_keys(config):
            def compute(key=key):
                model = _train(config, out, key, progress, log)
                t = time.perf_counter()
                if key.startswith("calpha_a"):
                    r = _analyse_calpha(config, model, key)
                elif key == "gaussian":
                    r = _analyse_gaussian(config, model)
                else:
                    r = _analyse_manifold(config, model, key)
                r["analysis_seconds"] = time.perf_counter() - t
                return r
            _cached(out, key, resume, log, compute)
    return write_optimal_basis_report(out, seconds=time.perf_counter() - t0)


def write_optimal_basis_report(out_dir, seconds: float | None = None) -> dict:
    """Collect the stored analyses into ``results.json`` and ``report.html``."""
    from ..report.jacobian import optimal_basis_report

    out = Path(out_dir)
    config = cfgmod.from_dict(OptimalBasisConfig, read_json(out / "config.json"))
    missing = [k for k in _model_keys(config) if not (out / "analysis" / f"{k}.json").exists()]
    if missing:
        raise ConfigError(f"{out} is missing the analyses {', '.join(missing)}; rerun the "
                          "same command to finish them")
    analyses = {k: read_json(out / "analysis" / f"{k}.json") for k in _model_keys(config)}
    results = {"config": cfgmod.to_dict(config), "summary": summarize(config, analyses)}
    if seconds is not None:
        results["seconds"] = seconds
    write_json(out / "results.json", results)
    optimal_basis_report(out, config, analyses, results["summary"])
    return results


def summarize(config: OptimalBasisConfig, analyses: dict) -> dict:
    """The headline numbers: C^α slopes vs α/(α+1), tangent angles, MSE/σ², Gaussian errors."""
    s: dict = {}
    calpha = [analyses[k] for k in analyses if k.startswith("calpha_a")]
    if calpha:
        s["calpha"] = [{"alpha": a["alpha"], "slope": a["slope"],
                        "optimal_slope": a["optimal_slope"]} for a in calpha]
    for key in ("disks", "ray"):
        if key in analyses:
            a = analyses[key]
            s[key] = [{
                "sigma": p["sigma"],
                "k": a["k"],
                "mean_angles_deg": _mean_columns(p["angles_deg"]),
                "random_mean_angles_deg": _mean_columns(p["random_angles_deg"]),
                "trace": _mean(p["trace"]),
                "mse_over_sigma2": p["mse_over_sigma2_eval"],
            } for p in a["per_sigma"]]
    if "gaussian" in analyses:
        rows = []
        for p in analyses["gaussian"]["per_sigma"]:
            net = p["network"]
            rows.append({
                "sigma": p["sigma"],
                "rel_error": _mean(net["rel_error"]),
                "diagonality": _mean(net["diagonality"]),
                "overlap": {k: _mean(v) for k, v in net["overlap"].items()},
                "max_angle_deg": {k: _mean(v) for k, v in net["angles_deg"].items()},
                "optimum_max_angle_deg": max((max(v) for v in p["optimum"]["angles_deg"]
                                              .values()), default=0.0),
                "trace": _mean(net["trace"]),
                "optimal_trace": net["optimal_trace"],
            })
        s["gaussian"] = rows
    return s


def _mean(values) -> float:
    return float(sum(values) / len(values))


def _mean_columns(rows) -> list[float]:
    return [float(v) for v in torch.tensor(rows, dtype=torch.float64).mean(0)]

