"""Factor sweeps: what makes a diffusion model memorize (Kaiser & Kollmann 2026, §3).

One factor varies at a time around a base setting, on small data (8×8 digits by default):

- ``steps``:    training time (one run per model, snapshots at each requested step: the
                weights at step S are those of a single run continued, bitwise, to S);
- ``width``:    UNet width (model size);
- ``size``:     training-set size N;
- ``classes``:  condition granularity: class-conditional UNet on k-means pseudo-labels of
                the training images (``sklearn.cluster.KMeans``, seeded), k = 2, 8, ...;
- ``guidance``: classifier-free guidance weight w of a conditional model with
                ``guidance_classes`` pseudo-classes trained with label dropout:
                D = D_cond + w (D_cond − D_uncond) (Ho & Salimans 2022).

Each point reports the per-noise-level gap G(σ) (:func:`pydiffgen.analysis.noise_level_gap`)
and the memorization fraction of deterministic Heun samples
(:func:`pydiffgen.metrics.memorization`). Everything is written as soon as it exists:
trained models (with their training checkpoints) under ``models/``, one JSON per point
under ``points/``; a killed sweep rerun with the same config resumes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .. import config as cfgmod
from ..errors import ConfigError
from ..io import read_json, write_json
from ._runs import Experiment, RunDir, named_preset, training_estimate, training_rate

__all__ = ["EXPERIMENT", "FACTORS", "FactorConfig", "PRESETS", "factor_points",
           "memorization_factors", "plan", "preset", "write_report"]

FACTORS = ("steps", "width", "size", "classes", "guidance")


@dataclass(frozen=True)
class FactorConfig:
    """One factor sweep. CLI flags map 1:1 to these fields."""

    name: str = field(default="factors", metadata={"help": "run name; output in runs/<name>"})
    dataset: str = field(default="digits", metadata={"help": "pydiffgen.data.load name"})
    dataset_options: tuple = ()
    factors: tuple[str, ...] = field(default=FACTORS, metadata={"help": ", ".join(FACTORS)})
    n_train: int = field(default=64, metadata={"help": "base training-set size N"})
    n_heldout: int = field(default=64, metadata={"help": "held-out images for the gap"})
    steps: int = field(default=1000, metadata={"help": "base training steps"})
    width: int = field(default=16, metadata={"help": "base UNet width"})
    levels: int = 2
    steps_values: tuple[int, ...] = (250, 1000, 3000)
    width_values: tuple[int, ...] = (8, 16, 32)
    size_values: tuple[int, ...] = (8, 64, 512)
    classes_values: tuple[int, ...] = field(default=(2, 8, 32),
                                            metadata={"help": "k-means k (pseudo-classes)"})
    guidance_values: tuple[float, ...] = field(default=(0.0, 0.5, 1.0, 2.0),
                                               metadata={"help": "guidance weights w"})
    guidance_classes: int = field(default=8, metadata={"help": "k of the guided model"})
    label_dropout: float = field(default=0.1, metadata={"help": "CFG label-drop probability"})
    batch_size: int = 64
    lr: float = 1e-3
    ema: float | None = 0.999
    n_samples: int = field(default=64, metadata={"help": "Heun samples per point"})
    sampler_steps: int = 18
    n_gap_sigmas: int = field(default=24, metadata={"help": "log-spaced σ in [0.002, 80]"})
    gap_images: int = field(default=64, metadata={"help": "images per split for the gap"})
    noise_draws: int = 1
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        unknown = sorted(set(self.factors) - set(FACTORS))
        if unknown or not self.factors:
            raise ConfigError(f"factors must be a non-empty subset of {', '.join(FACTORS)}, "
                              f"got {', '.join(self.factors) or '(none)'}")
        cfgmod.check_positive_ints(self, ("n_train", "n_heldout", "steps", "width", "levels",
                                          "batch_size", "n_samples", "sampler_steps",
                                          "n_gap_sigmas", "gap_images", "noise_draws",
                                          "guidance_classes"))
        for name in ("steps_values", "width_values", "size_values", "classes_values"):
            vals = getattr(self, name)
            if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                               for v in vals):
                raise ConfigError(f"{name} must be positive integers, got {vals}")
        if any(k < 2 for k in self.classes_values) or self.guidance_classes < 2:
            raise ConfigError("k-means pseudo-classes need k >= 2 (classes_values, "
                              "guidance_classes)")
        if not self.guidance_values or any(w < 0 for w in self.guidance_values):
            raise ConfigError(f"guidance_values must be >= 0, got {self.guidance_values}")
        if not 0 < self.label_dropout < 1:
            raise ConfigError(f"label_dropout must be in (0, 1) so the model also learns the "
                              f"unconditional denoiser, got {self.label_dropout}")


PRESETS: dict[str, FactorConfig] = {
    # ≈ 3-4 minutes on a 2-core CPU: every factor, two or three values each
    "demo": FactorConfig(
        name="factors-demo", n_train=16, n_heldout=16, steps=400, width=8,
        steps_values=(50, 400, 1600), width_values=(8, 32), size_values=(4, 16, 256),
        classes_values=(2, 8), guidance_values=(0.0, 1.0, 3.0), guidance_classes=4,
        batch_size=32, n_samples=32, sampler_steps=12, n_gap_sigmas=16, gap_images=16,
        noise_draws=2,
    ),
    # the default sweep with wider ranges (≈ 30-60 min on a 2-core CPU)
    "digits": FactorConfig(name="factors-digits"),
    "digits-full": FactorConfig(
        name="factors-digits-full", n_train=128, n_heldout=128, steps=3000, width=32,
        steps_values=(250, 1000, 3000, 10000), width_values=(8, 16, 32, 64),
        size_values=(8, 32, 128, 512, 896), classes_values=(2, 8, 32, 128),
        guidance_values=(0.0, 0.2, 0.5, 1.0, 2.0), guidance_classes=8, n_samples=256,
        n_gap_sigmas=64, gap_images=128,
    ),
}


preset = partial(named_preset, PRESETS)


def factor_points(config: FactorConfig) -> list[dict]:
    """Every (factor, value) point with the full setting it runs: n, width, k, steps, w."""
    c = config
    base = {"n": c.n_train, "width": c.width, "k": 0, "steps": c.steps, "w": None}
    pts = []
    for f in c.factors:
        if f == "steps":
            pts += [{**base, "factor": f, "value": v, "steps": v} for v in c.steps_values]
        elif f == "width":
            pts += [{**base, "factor": f, "value": v, "width": v} for v in c.width_values]
        elif f == "size":
            pts += [{**base, "factor": f, "value": v, "n": v} for v in c.size_values]
        elif f == "classes":
            pts += [{**base, "factor": f, "value": v, "k": v} for v in c.classes_values]
        else:
            pts += [{**base, "factor": f, "value": v, "k": c.guidance_classes, "w": float(v)}
                    for v in c.guidance_values]
    for p in pts:
        p["model"] = f"n{p['n']}_w{p['width']}_k{p['k']}"
        p["key"] = f"{p['factor']}_{p['value']}"
    return pts


def plan(config: FactorConfig) -> str:
    """One line per point of the sweep and the estimated training time (``--dry-run``):
    one training run per model, as long as its longest point."""
    from ..data import load

    pts = factor_points(config)
    lines = [f"{p['factor']}={p['value']}: N={p['n']} width={p['width']} k={p['k']} "
             f"steps={p['steps']} w={p['w']}" for p in pts]
    longest = {}
    for p in pts:
        if p["steps"] >= longest.get(p["model"], {"steps": 0})["steps"]:
            longest[p["model"]] = p
    shape = tuple(load(config.dataset, **dict(config.dataset_options))[:1].shape[1:])
    seconds = images = 0
    for p in longest.values():
        n = p["steps"] * config.batch_size
        rate = training_rate("unet", _model_options(config, p), shape, _train_config(config, p))
        seconds, images = seconds + n / rate, images + n
    lines.append(training_estimate(images, images / seconds))
    return "\n".join(lines)


def memorization_factors(config: FactorConfig, out_dir=None, *, resume: bool = True,
                         progress: bool = False, log=None) -> dict:
    """Run (or resume) the factor sweep; write points/*.json, summary.json and report.html.

    Returns the summary ``{"config", "points": {key: result}, "seconds"}``.
    """
    from ..data import load

    c = config
    with RunDir(out_dir, c, resume=resume, log=log, tag="factors") as run:
        run.claim("factor sweep")
        t0 = time.perf_counter()
        x = load(c.dataset, **dict(c.dataset_options))
        pts = factor_points(c)
        n_max = max(p["n"] for p in pts)
        if n_max + c.n_heldout > len(x):
            raise ConfigError(f"the largest N={n_max} plus n_heldout={c.n_heldout} needs "
                              f"{n_max + c.n_heldout} images but {c.dataset} has {len(x)}")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(c.seed))
        heldout = x[perm[:c.n_heldout]]
        pool = x[perm[c.n_heldout:]]  # training sets are nested prefixes of this

        def point(p):
            run.log(f"{p['factor']}={p['value']}: model {p['model']} at {p['steps']} steps")
            tp = time.perf_counter()
            r = _run_point(c, run, p, pool[:p["n"]], heldout, progress)
            r["seconds"] = time.perf_counter() - tp
            return r

        # evaluate in model order, steps ascending, so one run per model serves every step
        for p in sorted(pts, key=lambda p: (p["model"], p["steps"], p["key"])):
            run.cached(p["key"], lambda p=p: point(p), folder="points")
        summary = write_report(run.path, seconds=time.perf_counter() - t0)
        run.log(f"report: {run.path / 'report.html'}")
        return summary


def write_report(out_dir, seconds: float | None = None) -> dict:
    """Collect the stored points of a finished factor sweep into summary.json and
    report.html; returns the summary ``{"config", "points": {key: result}[, "seconds"]}``."""
    from ..report.memorization import factor_report

    out = Path(out_dir)
    config = cfgmod.from_dict(FactorConfig, read_json(out / "config.json"))
    pts = factor_points(config)
    missing = [p["key"] for p in pts if not (out / "points" / f"{p['key']}.json").exists()]
    if missing:
        raise ConfigError(f"{out} is missing points {', '.join(missing)}; rerun the sweep with "
                          "the same config to finish them")
    results = {p["key"]: read_json(out / "points" / f"{p['key']}.json") for p in pts}
    summary = {"config": cfgmod.to_dict(config), "points": results}
    if seconds is not None:
        summary["seconds"] = seconds
    write_json(out / "summary.json", summary)
    factor_report(out, config, pts, results)
    return summary


def _pseudo_labels(train, heldout, k: int, seed: int):
    """k-means pseudo-labels of the training images, and the held-out images' nearest centroid."""
    from sklearn.cluster import KMeans

    if k > len(train):
        raise ConfigError(f"k={k} pseudo-classes need at least {k} training images, got "
                          f"{len(train)}")
    km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(train.reshape(len(train), -1)
                                                                .double().numpy())
    lab_tr = torch.as_tensor(km.labels_, dtype=torch.long)
    lab_va = torch.as_tensor(km.predict(heldout.reshape(len(heldout), -1).double().numpy()),
                             dtype=torch.long)
    return lab_tr, lab_va


def _train_config(config: FactorConfig, p: dict):
    from ..training import TrainConfig

    return TrainConfig(
        steps=p["steps"], batch_size=config.batch_size, lr=config.lr, sigma_dist="edm",
        ema=config.ema, seed=config.seed, device=config.device, checkpoint_every=None,
        label_dropout=config.label_dropout if p["k"] else 0.0,
    )


def _model_options(config: FactorConfig, p: dict) -> dict:
    return {"width": p["width"], "levels": config.levels, "num_classes": p["k"]}


def _model(config: FactorConfig, run: RunDir, p: dict, train, labels, progress):
    """The EMA (or live) weights of model ``p['model']`` after ``p['steps']`` steps."""
    return run.trained_model(f"models/{p['model']}", "unet", _model_options(config, p),
                             lambda: train, _train_config(config, p), labels=labels,
                             snapshot=True, progress=progress)


@torch.no_grad()
def _run_point(config: FactorConfig, run: RunDir, p: dict, train, heldout, progress) -> dict:
    from ..analysis.gap import default_sigmas, noise_level_gap
    from ..diffusion.sampling import sample
    from ..metrics import generalization_score, memorization

    c = config
    lab_tr = lab_va = None
    if p["k"]:
        lab_tr, lab_va = _pseudo_labels(train, heldout, p["k"], c.seed)
    with torch.enable_grad():
        model = _model(c, run, p, train, lab_tr, progress)
    model = model.eval().to(c.device)
    train, heldout = train.to(c.device), heldout.to(c.device)

    if p["k"]:
        w = p["w"] or 0.0

        def denoiser(y, sigma, labels):
            D_cond = model(y, sigma, labels)
            if not w:
                return D_cond
            D_uncond = model(y, sigma, None)
            # classifier-free guidance (Ho & Salimans 2022): D = D_c + w (D_c − D_u)
            return D_cond + w * (D_cond - D_uncond)
    else:
        def denoiser(y, sigma):
            return model(y, sigma)

    n_img = min(c.gap_images, len(train), len(heldout))
    gap = noise_level_gap(denoiser, train, heldout, default_sigmas(c.n_gap_sigmas),
                          n_images=n_img, noise_draws=c.noise_draws, seed=c.seed,
                          class_labels=(lab_tr, lab_va) if p["k"] else None)
    shape = tuple(train.shape[1:])
    if p["k"]:
        # sample labels follow the pseudo-class frequencies of the training set (seeded)
        g = torch.Generator().manual_seed(c.seed)
        lab = lab_tr[torch.randint(len(lab_tr), (c.n_samples,), generator=g)].to(c.device)
        samples = sample(lambda y, s: denoiser(y, s, lab), c.n_samples, shape, method="heun",
                         steps=c.sampler_steps, seed=c.seed, device=c.device,
                         batch_size=c.n_samples)
    else:
        samples = sample(denoiser, c.n_samples, shape, method="heun", steps=c.sampler_steps,
                         seed=c.seed, device=c.device, batch_size=c.n_samples)
    samples = samples.cpu()
    mem = memorization(samples, train.cpu()) if len(train) >= 2 else None
    peak_sigma, peak_gap = gap.peak()
    return {
        **{k: p[k] for k in ("factor", "value", "n", "width", "k", "steps", "w", "model")},
        "gap": gap.to_dict(),
        "peak_sigma": peak_sigma,
        "peak_gap": peak_gap,
        "mean_gap": gap.mean_gap(0.05, 10.0),
        "memorized_fraction": mem.fraction if mem is not None else None,
        "generalization_score": generalization_score(samples, train.cpu()),
        "samples": samples[:16].tolist(),
    }


EXPERIMENT = Experiment(
    name="memorization factors", help="factor sweeps (time, width, N, classes, guidance)",
    config=FactorConfig, presets=PRESETS, run=memorization_factors, report=write_report,
    plan=plan)
