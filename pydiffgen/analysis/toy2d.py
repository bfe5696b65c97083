"""The 2-D toy of Kaiser & Kollmann (2026, docs/science.md#circle-toy): memorization on a circle.

Points evenly spaced on the unit circle (``pydiffgen.data.toy2d("circle", n)``), alternate
points train / held-out. Three denoisers of the training points:

- ``mlp``: an EDM-preconditioned MLP (``models.build("mlp")``) trained with the EDM loss;
- ``optimum``: the exact optimum y*(x; σ²), the softmax-weighted mean of the training
  points (:class:`pydiffgen.analysis.EmpiricalDenoiser`);
- ``blurred``: the δ-blurred optimum y_δ(x, t) = (t²·y*(x; t² + δ²) + δ²·x)/(t² + δ²)
  (:class:`BlurredOptimum`), a model of finite model error.

For each: the flow field (D(x; σ) − x on a grid, at a few σ), the relative gap G(σ)
(:func:`pydiffgen.analysis.noise_level_gap`), and Heun samples: memorized fraction,
share of samples nearer a held-out point than any training point, and distance to the
circle. ``fit_delta`` finds the blur δ whose y_δ is closest to the trained MLP. Runs in
seconds on a CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .._checks import check_positive_float, check_positive_int
from ..errors import InputError
from .distances import _apply

__all__ = ["BlurredOptimum", "Toy2DConfig", "circle_split", "fit_delta", "flow_field",
           "toy2d_experiment"]


class BlurredOptimum(torch.nn.Module):
    """y_δ(x, t) = (t²·y*(x; t² + δ²) + δ²·x)/(t² + δ²) for the empirical optimum y* of
    ``train`` [N, *F] (Kaiser & Kollmann 2026): the exact posterior mean when every
    training point is smeared by N(0, δ²I). δ = 0 is the optimum itself
    (:class:`pydiffgen.analysis.EmpiricalDenoiser`); δ > 0 is
    :class:`pydiffgen.analysis.BlurredEmpiricalDenoiser`."""

    def __init__(self, train: torch.Tensor, delta: float):
        from .empirical import BlurredEmpiricalDenoiser, EmpiricalDenoiser

        super().__init__()
        if not (isinstance(delta, (int, float)) and math.isfinite(delta) and delta >= 0):
            raise InputError(f"delta must be a finite number >= 0, got {delta!r}")
        self.delta = float(delta)
        self.denoiser = (BlurredEmpiricalDenoiser(train, self.delta) if self.delta > 0
                         else EmpiricalDenoiser(train))

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        return self.denoiser(x, sigma)


@dataclass(frozen=True)
class Toy2DConfig:
    """The 2-D toy. n_points on the circle (half train, half held-out); the MLP
    (hidden × depth) trained ``steps`` EDM steps; ``delta`` the blur of y_δ."""

    n_points: int = 32
    delta: float = 0.1
    hidden: int = 128
    depth: int = 3
    steps: int = 1500
    batch_size: int = 256
    lr: float = 2e-3
    seed: int = 0
    flow_sigmas: tuple[float, ...] = (0.05, 0.2, 0.5, 1.0)
    n_gap_sigmas: int = 32
    noise_draws: int = 64
    n_samples: int = 512
    sampler_steps: int = 32
    grid: int = 21
    extent: float = 1.5

    def __post_init__(self):  # refused here, before a run claims its folder
        circle_split(self.n_points)
        if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta)
                and self.delta >= 0):
            raise InputError(f"delta must be a finite number >= 0, got {self.delta!r}")
        for name in ("hidden", "depth", "steps", "batch_size", "n_gap_sigmas", "noise_draws",
                     "n_samples", "sampler_steps", "grid"):
            check_positive_int(getattr(self, name), name, minimum=2 if name == "grid" else 1)
        for name in ("lr", "extent"):
            check_positive_float(getattr(self, name), name)


def circle_split(n_points: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, heldout)``: even / odd points of ``n_points`` evenly spaced on the circle."""
    from ..data import toy2d

    n_points = check_positive_int(n_points, "n_points", minimum=4)
    if n_points % 2:
        raise InputError(f"n_points must be even (alternate train / held-out), got {n_points}")
    pts = toy2d("circle", n_points)  # [n, 2]
    return pts[0::2].contiguous(), pts[1::2].contiguous()


@torch.no_grad()
def flow_field(denoiser, sigma: float, *, extent: float = 1.5, resolution: int = 21):
    """``(grid [R², 2], D(grid; σ) − grid [R², 2])`` on a square grid of half-width extent."""
    sigma = check_positive_float(sigma, "sigma")
    r = check_positive_int(resolution, "resolution", minimum=2)
    u = torch.linspace(-extent, extent, r)
    gx, gy = torch.meshgrid(u, u, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # [R², 2]
    return grid, _apply(denoiser, grid, sigma, 4096) - grid


def fit_delta(denoiser, train: torch.Tensor, sigmas, deltas=None, *, n_probe: int = 512,
              seed: int = 0) -> dict:
    """The blur δ whose y_δ best matches ``denoiser`` (mean RMSE over ``sigmas`` on noisy
    versions of the training points). Returns {"delta", "rmse", "deltas", "rmses"};
    δ = 0 stands for the exact optimum."""
    from .distances import output_distance
    deltas = [0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5] if deltas is None else deltas
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(train), (n_probe,), generator=gen)
    z = torch.randn(n_probe, *train.shape[1:], generator=gen)
    rmses = []
    for d in deltas:
        ref = BlurredOptimum(train, d)
        vals = []
        for s in sigmas:
            y = train[idx] + s * z
            vals.append(output_distance(_apply(denoiser, y, s, 4096), _apply(ref, y, s, 4096))
                        ["rmse"])
        rmses.append(sum(vals) / len(vals))
    i = min(range(len(deltas)), key=lambda j: rmses[j])
    return {"delta": float(deltas[i]), "rmse": rmses[i], "deltas": [float(d) for d in deltas],
            "rmses": rmses}


def toy2d_experiment(config: Toy2DConfig = Toy2DConfig(), *, model=None,
                     progress: bool = False) -> dict:
    """Run the toy: train the MLP (or use ``model``), then measure all three denoisers.

    Returns a dict with ``train``/``heldout`` points, per denoiser ``gap`` (GapResult
    dict), ``flow`` ({σ: (grid, displacement)}), ``samples`` [n, 2] and sample metrics,
    ``fit_delta`` and timings. Tensors stay tensors (see ``report.memorization``).
    """
    from .. import models
    from ..diffusion.sampling import sample
    from ..metrics import memorization
    from ..ops import knn
    from ..training import TrainConfig, train
    from .empirical import EmpiricalDenoiser
    from .gap import default_sigmas, noise_level_gap

    c = config
    t0 = time.perf_counter()
    tr, ho = circle_split(c.n_points)
    losses = None
    if model is None:
        torch.manual_seed(c.seed)
        model = models.build("mlp", dim=2, hidden=c.hidden, depth=c.depth)
        res = train(model, tr, TrainConfig(steps=c.steps, batch_size=c.batch_size, lr=c.lr,
                                           sigma_dist="edm", ema=None, seed=c.seed,
                                           checkpoint_every=None), progress=progress)
        losses = res.losses
    model.eval()
    t_train = time.perf_counter() - t0
    dens = {"mlp": model, "optimum": EmpiricalDenoiser(tr),
            "blurred": BlurredOptimum(tr, c.delta)}
    sigmas = default_sigmas(c.n_gap_sigmas)
    out = {"config": dict(c.__dict__), "train": tr, "heldout": ho, "denoisers": {},
           "train_seconds": t_train}
    for name, den in dens.items():
        gap = noise_level_gap(den, tr, ho, sigmas, noise_draws=c.noise_draws, seed=c.seed,
                              optimum=dens["optimum"])
        flows = {s: flow_field(den, s, extent=c.extent, resolution=c.grid)
                 for s in c.flow_sigmas}
        x = sample(den, c.n_samples, (2,), method="heun", steps=c.sampler_steps, seed=c.seed)
        mem = memorization(x, tr)
        d_tr = knn(x, tr, 1)[0][:, 0].clamp_min(0).sqrt()
        d_ho = knn(x, ho, 1)[0][:, 0].clamp_min(0).sqrt()
        out["denoisers"][name] = {
            "gap": gap.to_dict(),
            "flow": flows,
            "samples": x,
            "memorized_fraction": mem.fraction,
            "nearer_heldout_fraction": float((d_ho < d_tr).double().mean()),
            "mean_radius_error": float((x.norm(dim=1) - 1).abs().mean()),
            "median_distance_to_train": float(d_tr.median()),
        }
    spacing = 2 * math.pi / c.n_points  # distance between a train and a held-out point
    out["spacing"] = spacing
    out["fit_delta"] = fit_delta(model, tr, [s for s in sigmas if 0.01 <= s <= 1.0])
    out["losses"] = losses
    out["seconds"] = time.perf_counter() - t0
    return out
