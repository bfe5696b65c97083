"""Optimal bases of synthetic image classes (Kadkhodaie, Guth, Simoncelli & Mallat, ICLR
2024, §4; docs/science.md#synthetic-classes).

A bias-free denoiser is f(y) = J(y)·y: it shrinks y along the eigenvectors e_k(y) of its
Jacobian by the eigenvalues λ_k. For image classes whose optimal denoiser is known, the
paper checks that a trained network finds the optimal basis:

- **C^α images** (two C^α backgrounds separated by a C^α contour): the optimal MSE decays
  like σ^(2α/(α+1)), so output PSNR grows with input PSNR at slope α/(α+1); we fit the
  slope of the trained network's output-vs-input PSNR curve over ``fit_range``, beside
  the slope of the best linear denoiser (the Gaussian D_G of the training images), which
  cannot use the contour's geometry: a network only shows the α/(α+1) rate where it
  beats that reference.
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

The comparisons themselves are in :mod:`pydiffgen.analysis.basis`. Every trained model
(``models/<key>``) and every analysis (``analysis/<key>.json``) is stored as soon as it
exists, so a rerun with the same config resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .. import config as cfgmod
from ..analysis.basis import (
    add_noise,
    disk_tangent_space,
    gaussian_alignment,
    manifold_alignment,
    optimal_slope,
    psnr_slope,
    top_eigenvectors,
)
from ..errors import ConfigError
from ..io import read_json, write_json
from ._runs import (
    Experiment,
    RunDir,
    named_preset,
    torch_threads,
    training_estimate,
    training_rate,
)

__all__ = ["EXPERIMENT", "IMAGE_CLASSES", "OptimalBasisConfig", "PRESETS", "optimal_basis",
           "plan", "preset", "summary_lines", "write_report"]

IMAGE_CLASSES = ("calpha", "disks", "ray", "gaussian")


@dataclass(frozen=True)
class OptimalBasisConfig:
    """One run. CLI flags map 1:1 to these fields (``pydiffgen optimal-basis --help``)."""

    name: str = field(default="optimal-basis", metadata={"help": "run name; output in runs/<name>"})
    experiments: tuple[str, ...] = field(
        default=("calpha", "disks", "ray", "gaussian"),
        metadata={"help": f"which to run: {', '.join(IMAGE_CLASSES)}"})
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
    lr_halve_every: int | None = field(
        default=None, metadata={"help": "halve the learning rate every this many steps "
                                        "(none: constant)"})
    sigma_dist: str = field(
        default="kadkhodaie",
        metadata={"help": "training noise levels: kadkhodaie (σ = U²·sigma_max, unweighted "
                          "loss), edm (ln σ ~ N(P_mean, P_std²), λ(σ)-weighted loss) or "
                          "log-uniform (ln σ uniform on [ln sigma_min, ln sigma_max], loss "
                          "‖D(y) − x‖²/σ²)"})
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_min: float = field(default=0.02, metadata={"help": "bottom of the log-uniform σ range"})
    sigma_max: float = field(default=2.0, metadata={
        "help": "top of the kadkhodaie and log-uniform σ ranges (2: the paper's σ = U² on "
                "[0, 1] images, for our [-1, 1] ones)"})
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
        cfgmod.check_positive_ints(self, ("size", "n_train", "n_eval", "levels", "width",
                                          "steps", "batch_size", "jacobian_images",
                                          "gaussian_size"))
        unknown = [e for e in self.experiments if e not in IMAGE_CLASSES]
        if not self.experiments or unknown:
            raise ConfigError(f"experiments must be among {', '.join(IMAGE_CLASSES)}, got "
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
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, "
                              f"{self.sigma_max}")
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


preset = partial(named_preset, PRESETS)


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
        f"{c.width}), {c.steps} steps × batch {c.batch_size} on {c.n_train} images each, "
        f"{_sigma_text(c)}: " + ", ".join(keys),
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
    with torch_threads(c.threads):
        images = len(keys) * c.steps * c.batch_size
        shape = (1, c.size, c.size)  # the Gaussian model's smaller images only speed it up
        lines.append(training_estimate(images, training_rate(
            "bf_unet", {"levels": c.levels, "width": c.width}, shape, _train_config(c))))
    return "\n".join(lines)


def _sigma_text(c: OptimalBasisConfig) -> str:
    """The training noise distribution in words, for the plan."""
    if c.sigma_dist == "log-uniform":
        return f"sigma log-uniform on [{c.sigma_min:g}, {c.sigma_max:g}]"
    if c.sigma_dist == "edm":
        return f"ln sigma ~ N({c.P_mean:g}, {c.P_std:g}^2)"
    return f"sigma = U^2 * {c.sigma_max:g}"


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


def _model(config: OptimalBasisConfig, run: RunDir, key: str, progress):
    return run.trained_model(f"models/{key}", "bf_unet",
                             {"levels": config.levels, "width": config.width},
                             lambda: _dataset(config, key, config.n_train, config.seed)[0],
                             _train_config(config), progress=progress, label=key)


def _train_config(config: OptimalBasisConfig):
    from ..training import TrainConfig

    return TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                       lr_halve_every=config.lr_halve_every, sigma_dist=config.sigma_dist,
                       sigma_min=config.sigma_min, sigma_max=config.sigma_max,
                       P_mean=config.P_mean, P_std=config.P_std,
                       seed=config.seed, device=config.device)


def _analyse_calpha(config, model, key):
    from ..analysis import GaussianDenoiser
    from ..metrics import denoising_psnr_curve, sigma_for_psnr

    alpha = float(key[len("calpha_a"):])
    x, _ = _dataset(config, key, config.n_eval, config.seed + 1)
    x = x.to(config.device)
    sigmas = [sigma_for_psnr(p) for p in config.psnr_levels]
    curve = denoising_psnr_curve(model, x, sigmas, seed=config.seed)
    fit = psnr_slope(curve["input_psnr"], curve["output_psnr"], config.fit_range)
    # the best linear denoiser (Wiener filter of the training set's mean and covariance)
    # on the same noisy images: what a denoiser that ignores the contour's geometry reaches
    linear = GaussianDenoiser.fit(_dataset(config, key, config.n_train, config.seed)[0])
    linear_curve = denoising_psnr_curve(linear.to(config.device), x, sigmas, seed=config.seed)
    linear_fit = psnr_slope(linear_curve["input_psnr"], linear_curve["output_psnr"],
                            config.fit_range)
    return {"alpha": alpha, "optimal_slope": optimal_slope(alpha), **fit,
            "fit_range": list(config.fit_range), "curve": curve,
            "linear_slope": linear_fit["slope"], "linear_curve": linear_curve}


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
        y = add_noise(x0, s, config.seed + 100 + i)
        with torch.no_grad():
            out = model(y, torch.full((len(y),), s, device=y.device))
        err = ((out.double() - x0.double()) ** 2).reshape(len(y), -1).sum(1).cpu() / s**2
        a["mse_over_sigma2_eval"] = float(err.mean())
        per_sigma.append(a)
    k = tangent.shape[2]
    eig = top_eigenvectors(model, x0[:1], config.sigmas, k + 3)
    return {"k": k, "d": x0[0].numel(), "per_sigma": per_sigma, "example": x0[0].cpu().tolist(),
            "example_tangent": tangent[0].T.reshape(k, *x0.shape[1:]).tolist(),
            "eigenvectors": eig}


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
        y = add_noise(x, s, config.seed + i)
        net = gaussian_alignment(model, G, y, s)
        exact = gaussian_alignment(G_dev, G, y.double(), s)
        per_sigma.append({"sigma": s, "network": net, "optimum": exact})
    k = 8
    U = G.eigenvectors[:, :k].T.reshape(k, 1, size, size)
    return {"d": size * size, "per_sigma": per_sigma,
            "covariance_eigenvalues": G.eigenvalues[:k].tolist(),
            "covariance_eigenvectors": U.to(torch.float32).tolist(),
            "eigenvectors": top_eigenvectors(model, x[:1], config.sigmas, k)}


def optimal_basis(config: OptimalBasisConfig, out_dir=None, *, resume: bool = True,
                  progress: bool = True, log=None) -> dict:
    """Run (or resume) the experiments; write ``results.json`` and ``report.html``."""
    with RunDir(out_dir, config, resume=resume, log=log, tag="optimal-basis") as run:
        run.claim("optimal-basis run")
        t0 = time.perf_counter()
        with torch_threads(config.threads):
            for key in _model_keys(config):
                def compute(key=key):
                    model = _model(config, run, key, progress)
                    t = time.perf_counter()
                    if key.startswith("calpha_a"):
                        r = _analyse_calpha(config, model, key)
                    elif key == "gaussian":
                        r = _analyse_gaussian(config, model)
                    else:
                        r = _analyse_manifold(config, model, key)
                    r["analysis_seconds"] = time.perf_counter() - t
                    return r
                run.cached(key, compute)
        return write_report(run.path, seconds=time.perf_counter() - t0)


def write_report(out_dir, seconds: float | None = None) -> dict:
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


def summary_lines(results: dict) -> list[str]:
    """The headline numbers of a run, one line per experiment and σ (printed by the CLI)."""
    s = results["summary"]
    lines = [f"C^alpha alpha={r['alpha']:g}: PSNR slope {r['slope']:.3f} "
             f"(optimal {r['optimal_slope']:.3f}"
             + ("" if r.get("linear_slope") is None else
                f"; best linear denoiser {r['linear_slope']:.3f}") + ")"
             for r in s.get("calpha", [])]
    for key in ("disks", "ray"):
        lines += [f"{key} sigma={r['sigma']:g}: angles "
                  f"{', '.join(f'{a:.1f}' for a in r['mean_angles_deg'])} deg (random "
                  f"{r['random_mean_angles_deg'][0]:.1f}); tr J {r['trace']:.2f}; "
                  f"MSE/sigma^2 {r['mse_over_sigma2']:.2f} (optimum ~{r['k']})"
                  for r in s.get(key, [])]
    lines += [f"gaussian sigma={r['sigma']:g}: |J - W_G|/|W_G| {r['rel_error']:.3f}; "
              f"diagonality {r['diagonality']:.3f}; tr J {r['trace']:.2f} "
              f"(optimal {r['optimal_trace']:.2f})" for r in s.get("gaussian", [])]
    return lines


def summarize(config: OptimalBasisConfig, analyses: dict) -> dict:
    """The headline numbers: C^α slopes vs α/(α+1), tangent angles, MSE/σ², Gaussian errors."""
    s: dict = {}
    calpha = [analyses[k] for k in analyses if k.startswith("calpha_a")]
    if calpha:
        s["calpha"] = [{"alpha": a["alpha"], "slope": a["slope"],
                        "optimal_slope": a["optimal_slope"],
                        # None in analyses stored before the linear reference existed
                        "linear_slope": a.get("linear_slope")} for a in calpha]
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


EXPERIMENT = Experiment(
    name="optimal-basis", help="do trained denoisers find the optimal basis? C^alpha PSNR "
    "slopes, disk/ray tangent spaces, Gaussian eigenvectors", config=OptimalBasisConfig,
    presets=PRESETS, run=optimal_basis, report=write_report, plan=plan,
    summary=summary_lines)
