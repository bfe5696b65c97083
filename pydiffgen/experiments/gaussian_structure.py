"""The hidden Gaussian structure of trained denoisers (Li, Dai & Qu, NeurIPS 2024, §3-4).

Trains small EDM UNets on a built-in data set and compares, at log-spaced noise levels σ,
four denoisers on held-out noisy images:

- the network D_θ;
- D_L, its best affine approximation at that σ (``linear_distill``, exact least squares);
- D_G, the optimal denoiser of the Gaussian with the training set's mean and covariance;
- D_M, the empirical optimum (softmax-weighted mean of the training images).

The main model gives the distance curves, the linearity score and W_L vs W_G; the same
RMSE(D_θ, D_G) curves are repeated across training-set size N, model width and training
time (checkpoints of the main model), with the generalization score of samples. Li et al.
find three regimes: high σ, everything agrees; low σ, D_L ≈ D_G ≈ identity;
intermediate σ, the network is nonlinear, D_M fails and D_L ≈ D_G — and a Gaussian bias
that is strongest for larger N, smaller models and early in training.

Every trained model (``models/``) and every per-model analysis (``analysis/*.json``) is
stored as soon as it exists; a rerun with the same config reuses them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .. import config as cfgmod
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

__all__ = ["EXPERIMENT", "GaussianConfig", "PRESETS", "gaussian_structure", "plan", "preset",
           "regimes", "write_report"]


@dataclass(frozen=True)
class GaussianConfig:
    """One run. CLI flags map 1:1 to these fields (``pydiffgen gaussian --help``)."""

    name: str = field(default="gaussian", metadata={"help": "run name; output in runs/<name>"})
    dataset: str = field(default="digits", metadata={"help": "pydiffgen.data.load name"})
    dataset_options: tuple = ()
    dedup_threshold: float | None = field(
        default=0.95, metadata={"help": "drop one of each pair with |corr| above (none: keep)"})
    n_train: int = field(default=1000, metadata={"help": "training-set size of the main model"})
    n_eval: int = field(default=128, metadata={"help": "held-out images for distances"})
    n_distill: int | None = field(
        default=None, metadata={"help": "held-out images D_L is fitted on (none: all the "
                                        "rest; cap it on large data sets, each costs a network "
                                        "pass per σ)"})
    sizes: tuple[int, ...] = field(default=(16, 128, 1000),
                                   metadata={"help": "training-set sizes N of the size sweep"})
    width: int = field(default=16, metadata={"help": "UNet width of the main model"})
    widths: tuple[int, ...] = field(default=(4, 16), metadata={"help": "widths of the width sweep"})
    levels: int = 2
    steps: int = field(default=1000, metadata={"help": "training steps of every model"})
    checkpoints: tuple[int, ...] = field(
        default=(50, 200), metadata={"help": "earlier steps of the main model to analyse"})
    batch_size: int = 64
    lr: float = 2e-3
    lr_halve_every: int | None = field(
        default=None, metadata={"help": "halve lr every this many steps (none: constant)"})
    ema: float | None = field(default=None, metadata={"help": "EMA decay of the weights the "
                                                              "analysis sees (none: raw)"})
    n_sigmas: int = field(default=16, metadata={"help": "log-spaced noise levels"})
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    adam_sigmas: tuple[float, ...] = field(
        default=(0.1, 1.0, 10.0), metadata={"help": "σ where Adam distillation is checked"})
    tol: float = field(default=0.05, metadata={"help": "RMSE below which denoisers agree"})
    n_samples: int = field(default=64, metadata={"help": "samples per model (generalization)"})
    sampler_steps: int = 18
    seed: int = 0
    threads: int | None = field(
        default=1, metadata={"help": "torch CPU threads (1: no OpenMP contention on small "
                                     "models; none: leave torch's setting)"})
    device: str = "cpu"

    def __post_init__(self):
        cfgmod.check_positive_ints(self, ("n_train", "n_eval", "width", "levels", "steps",
                                          "batch_size", "n_sigmas", "n_samples",
                                          "sampler_steps"))
        if not self.sizes or any(n < 1 or n > self.n_train for n in self.sizes):
            raise ConfigError(f"sizes must lie in [1, n_train={self.n_train}], got {self.sizes}")
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError(f"widths must be positive integers, got {self.widths}")
        if any(s < 1 or s >= self.steps for s in self.checkpoints):
            raise ConfigError(f"checkpoints must lie in [1, steps={self.steps}), "
                              f"got {self.checkpoints}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {self.sigma_min}, "
                              f"{self.sigma_max}")
        if any(not s > 0 for s in self.adam_sigmas):
            raise ConfigError(f"adam_sigmas must be positive, got {self.adam_sigmas}")
        if not self.tol > 0:
            raise ConfigError(f"tol must be > 0, got {self.tol}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or none, got {self.threads}")
        if self.n_distill is not None and self.n_distill < 1:
            raise ConfigError(f"n_distill must be >= 1 or none, got {self.n_distill}")

    @property
    def sigmas(self) -> list[float]:
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        n = self.n_sigmas
        return [math.exp(lo + (hi - lo) * i / max(1, n - 1)) for i in range(n)]


PRESETS: dict[str, GaussianConfig] = {
    # ≈ 1.5 min on a busy 2-core CPU (93 s measured): 8×8 digits, four EDM UNets
    # (N = 16, 128, 1000 at width 16; width 4 at N = 1000), checkpoints at 50 / 200 / 1000
    "demo": GaussianConfig(name="gaussian-demo"),
    # fuller sweep: 9 models × 4000 steps, widths up to 64 (not timed here; from the demo's
    # per-step times, an hour or more on a 2-core CPU)
    "digits": GaussianConfig(
        name="gaussian-digits", sizes=(8, 32, 128, 512, 1000), width=32,
        widths=(4, 8, 16, 32, 64), steps=4000, checkpoints=(100, 300, 1000, 2000),
        lr=1e-3, n_sigmas=24, n_samples=256,
    ),
    # The paper's generalization regime (N = 10⁴–10⁵ natural images) on a CPU: 8×8 grayscale
    # patches of scikit-image's photographs, a faithful stand-in for its natural-image data
    # sets (CIFAR, CelebA, FFHQ) where 1797 digits cannot reach N = 10⁴. 76876 patches
    # remain after de-duplication; N = 64 / 1024 / 16384 at width 16, widths 4 / 8 at
    # N = 16384, 3000 steps each with the lr halved every 1000 and EMA weights. D_L is
    # fitted on 2048 held-out patches (one noisy copy each: 2048 equations for the 65
    # unknowns of each row of [W b]). Patches are smooth (mean within-patch std 0.08 in [-1, 1]), so
    # every RMSE here is on a smaller scale than on digits: read RMSE(D_L, D_G) beside
    # RMSE(D_G, D_M), the gap between the two denoisers the network could follow.
    "patches": GaussianConfig(
        name="gaussian-patches", dataset="patches", dataset_options=(("size", 8),),
        n_train=16384, n_eval=256, n_distill=2048, sizes=(64, 1024, 16384),
        widths=(4, 8, 16), steps=3000, checkpoints=(100, 500), lr_halve_every=1000,
        ema=0.999,
    ),
    # the same on a GPU at the paper's sizes: N up to 65536 (the paper's FFHQ sweep ends at
    # 70000), widths 4 … 64 as in its model-size sweep, 20000 steps (not yet run)
    "patches-paper": GaussianConfig(
        name="gaussian-patches-paper", dataset="patches", dataset_options=(("size", 8),),
        n_train=65536, n_eval=512, n_distill=4096, sizes=(64, 1024, 16384, 65536),
        width=32, widths=(4, 8, 16, 32, 64), steps=20000,
        checkpoints=(200, 1000, 5000), lr=1e-3, lr_halve_every=5000, ema=0.999,
        n_sigmas=24, n_samples=256, threads=None, device="cuda",
    ),
}


preset = partial(named_preset, PRESETS)


def plan(config: GaussianConfig) -> str:
    c = config
    keys = _model_keys(c)
    return "\n".join([
        f"gaussian structure {c.name!r}: dataset {c.dataset} {dict(c.dataset_options) or ''}"
        .rstrip(),
        f"  {len(keys)} EDM UNets (levels {c.levels}), {c.steps} steps each: "
        + ", ".join(f"N={n} width={w}" for n, w in keys),
        f"  main model N={c.n_train} width={c.width}, also analysed at steps "
        f"{', '.join(map(str, c.checkpoints))}",
        f"  {c.n_sigmas} log-spaced sigma in [{c.sigma_min}, {c.sigma_max}] on {c.n_eval} "
        "held-out images: network, linear distillation D_L, Gaussian D_G, empirical D_M",
        f"  generalization score of {c.n_samples} Heun samples per model",
        _estimate(c, keys),
    ])


def _estimate(c: GaussianConfig, keys) -> str:
    """The plan's training-time line: each width's measured rate (widths differ in cost)."""
    from ..data import load

    shape = tuple(load(c.dataset, **dict(c.dataset_options))[:1].shape[1:])
    with torch_threads(c.threads):
        seconds = 0.0
        for width in sorted({w for _, w in keys}):
            rate = training_rate("unet", {"width": width, "levels": c.levels}, shape,
                                 _train_config(c, c.steps, seed=c.seed))
            seconds += sum(w == width for _, w in keys) * c.steps * c.batch_size / rate
        images = len(keys) * c.steps * c.batch_size
        return training_estimate(images, images / seconds)


def _model_keys(c: GaussianConfig) -> list[tuple[int, int]]:
    keys = [(c.n_train, c.width)]
    keys += [(n, c.width) for n in sorted(c.sizes) if n != c.n_train]
    keys += [(c.n_train, w) for w in sorted(c.widths) if w != c.width]
    return keys


def gaussian_structure(config: GaussianConfig, out_dir=None, *, resume: bool = True,
                       progress: bool = True, log=None) -> dict:
    """Run (or resume) the experiment; write models, analyses, metrics.json, report.html.

    Returns the metrics dict also written to ``<out_dir>/metrics.json``.
    """
    with RunDir(out_dir, config, resume=resume, log=log, tag="gaussian") as run:
        run.claim("run")
        t0 = time.perf_counter()
        with torch_threads(config.threads):
            train, held = _data(config, run)
            n_eval = min(config.n_eval, len(held) // 2)
            evalset = held[:n_eval]
            distill = held[n_eval:][: config.n_distill]
            main_key = f"n{config.n_train}_w{config.width}"
            for n, w in _model_keys(config):
                key = f"n{n}_w{w}"

                def analyse(steps, full, n=n, w=w):
                    model = _model(config, run, n, w, steps, train, progress)
                    return _analyse(config, model, train[:n], evalset, distill, full=full)

                if key == main_key:  # earlier checkpoints first: training only moves forward
                    for step in sorted(config.checkpoints):
                        run.cached(f"{key}_step{step}",
                                   lambda step=step, analyse=analyse: analyse(step, False))
                run.cached(key, lambda analyse=analyse, full=key == main_key:
                           analyse(config.steps, full))
        run.write_json("dataset.json", {"name": config.dataset, "train": len(train),
                                        "held_out": len(held), "eval": n_eval,
                                        "distill": len(distill), "shape": list(train.shape[1:])})
        metrics = write_report(run.path, seconds=time.perf_counter() - t0)
        run.log(f"report: {run.path / 'report.html'}")
        return metrics


def _data(config: GaussianConfig, run: RunDir):
    from ..data import deduplicate, load

    x = load(config.dataset, **dict(config.dataset_options))
    n_raw = len(x)
    if config.dedup_threshold is not None:
        x = deduplicate(x, threshold=config.dedup_threshold)
    need = config.n_train + 4
    if len(x) < need:
        raise ConfigError(f"{config.dataset} has {len(x)} images after de-duplication; "
                          f"n_train={config.n_train} leaves too few held out (need {need})")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(config.seed))
    x = x[perm]
    run.log(f"{config.dataset}: {n_raw} images, {len(x)} after de-duplication; "
            f"{config.n_train} train, {len(x) - config.n_train} held out")
    return x[: config.n_train], x[config.n_train :]


def _train_config(config: GaussianConfig, steps: int, seed: int):
    from ..training import TrainConfig

    return TrainConfig(steps=steps, batch_size=config.batch_size, lr=config.lr,
                       lr_halve_every=config.lr_halve_every, sigma_dist="edm", ema=config.ema,
                       checkpoint_every=None, seed=seed, device=config.device)


def _model(config: GaussianConfig, run: RunDir, n, width, steps, train, progress):
    """The (n, width) model after ``steps`` steps: one training run per model, continued
    through the checkpoints (their weights kept as snapshots)."""
    tc = _train_config(config, steps, seed=config.seed + 1000 * width + n)
    return run.trained_model(f"models/n{n}_w{width}", "unet",
                             {"width": width, "levels": config.levels}, lambda: train[:n], tc,
                             snapshot=steps != config.steps, progress=progress,
                             label=f"N={n} width={width}")


def _empirical(train):
    from ..analysis import EmpiricalDenoiser

    return EmpiricalDenoiser(train)


def _analyse(config, net, train, evalset, distill, *, full: bool) -> dict:
    """Per-σ comparison of ``net`` with D_G (and, if ``full``, D_L, D_M and the identity)."""
    from ..analysis import (
        GaussianDenoiser,
        compare_weights,
        denoiser_outputs,
        linear_distill,
        linearity_score,
        output_distance,
    )
    from ..diffusion.sampling import sample
    from ..metrics import generalization_score

    dev = config.device
    net = net.eval().to(dev)
    train, evalset, distill = train.to(dev), evalset.to(dev), distill.to(dev)
    G = GaussianDenoiser.fit(train).to(dev)
    M = _empirical(train) if full else None
    d = train[0].numel()
    n_noise = max(1, math.ceil(4 * (d + 1) / len(distill)))
    res = {"n": len(train), "sigma": config.sigmas, "dist": {}, "linearity": {},
           "weights": {"rel_error": [], "mean_cosine": []}}

    def add(pair, dist):
        entry = res["dist"].setdefault(pair, {"rmse": [], "nmse": []})
        entry["rmse"].append(dist["rmse"])
        entry["nmse"].append(dist["nmse"])

    for s in config.sigmas:
        y, D_net = denoiser_outputs(net, evalset, s, seed=config.seed)
        _, D_G = denoiser_outputs(G, evalset, s, seed=config.seed)
        add("net-G", output_distance(D_net, D_G))
        res["linearity"].setdefault("net", []).append(
            linearity_score(net, evalset, s, seed=config.seed))
        if not full:
            continue
        L = linear_distill(net, distill, s, n_noise=n_noise, seed=config.seed + 1).to(dev)
        _, D_L = denoiser_outputs(L, evalset, s, seed=config.seed)
        _, D_M = denoiser_outputs(M, evalset, s, seed=config.seed)
        outs = {"net": D_net, "L": D_L, "G": D_G, "M": D_M, "y": y}
        for pair in ("net-L", "L-G", "net-M", "G-M", "net-y", "L-y", "G-y"):
            a, b = pair.split("-")
            add(pair, output_distance(outs[a], outs[b]))
        res["linearity"].setdefault("M", []).append(
            linearity_score(M, evalset, s, seed=config.seed))
        W_G, _ = G.weight(s)
        cmp = compare_weights(L.weight, W_G.float(), k=min(16, d))
        res["weights"]["rel_error"].append(cmp["rel_error"])
        res["weights"]["mean_cosine"].append(cmp["mean_cosine"])
    if full:
        mid = min(range(len(config.sigmas)), key=lambda i: abs(math.log(config.sigmas[i])))
        s_mid = config.sigmas[mid]
        L = linear_distill(net, distill, s_mid, n_noise=n_noise, seed=config.seed + 1)
        res["weights"]["example"] = {"sigma": s_mid, "W_L": L.weight.tolist(),
                                     "W_G": G.weight(s_mid)[0].tolist()}
        res["adam"] = []
        for s in config.adam_sigmas:
            A = linear_distill(net, distill, s, n_noise=n_noise, seed=config.seed + 1)
            B = linear_distill(net, distill, s, method="adam", n_noise=n_noise,
                               seed=config.seed + 1)
            res["adam"].append({"sigma": s,
                                "rel_error_vs_lstsq": compare_weights(B.weight, A.weight)
                                ["rel_error"],
                                "adam_vs_G": compare_weights(B.weight, G.weight(s)[0].float())
                                ["rel_error"]})
    shape = tuple(train.shape[1:])
    x_net = sample(net, config.n_samples, shape, method="heun", seed=config.seed,
                   device=dev, steps=config.sampler_steps, sigma_min=config.sigma_min,
                   sigma_max=config.sigma_max)
    res["generalization"] = {"net": generalization_score(x_net, train)}
    if full:
        x_G = G.sample(config.n_samples, sigma_max=config.sigma_max, seed=config.seed)
        res["generalization"]["G"] = generalization_score(x_G.to(dev), train)
        res["generalization"]["net_vs_G_rmse"] = float(
            (x_net - x_G.to(dev)).reshape(len(x_G), -1).pow(2).mean(1).sqrt().mean())
    return res


def regimes(sigmas, dist: dict, tol: float) -> list[str]:
    """Li et al.'s three regimes, three contiguous bands of σ (ascending ``sigmas``), judged
    on the analytic denoisers so that they describe the data and the noise level, not how
    well a network happened to train:

    - "low":  from the smallest σ up, while D_G stays within ``tol`` RMSE of the identity
      (noise too small to matter);
    - "high": from the largest σ down, while D_G stays within ``tol`` of the empirical
      optimum D_M (both ≈ the mean);
    - "intermediate": between. Where the network agrees is then the finding.

    Bands, not σ-by-σ labels: on data whose D_G and D_M differ little at every σ (smooth
    photo patches) a σ-by-σ test flickers between "high" and "intermediate" mid-range.
    """
    n = len(sigmas)
    low = next((i for i in range(n) if dist["G-y"]["rmse"][i] >= tol), n)
    high = next((i + 1 for i in reversed(range(low, n)) if dist["G-M"]["rmse"][i] >= tol), low)
    return ["low"] * low + ["intermediate"] * (high - low) + ["high"] * (n - high)


def _summary(config, results) -> dict:
    main = results["models"][f"n{config.n_train}_w{config.width}"]
    sig = main["sigma"]
    labels = regimes(sig, main["dist"], config.tol)
    mid = [i for i, lab in enumerate(labels) if lab == "intermediate"]

    def mean_over(values, idx):
        return sum(values[i] for i in idx) / len(idx) if idx else None

    band = mid or list(range(len(sig)))
    pairs = ("net-G", "net-L", "L-G", "net-M", "G-M", "G-y", "L-y")
    out = {
        "regimes": labels,
        "intermediate_sigma": [sig[i] for i in mid],
        "per_regime": {
            name: {"sigma": [sig[i] for i in idx],
                   **{f"rmse_{p}": mean_over(main["dist"][p]["rmse"], idx) for p in pairs},
                   "linearity_net": mean_over(main["linearity"]["net"], idx),
                   "linearity_M": mean_over(main["linearity"]["M"], idx)}
            for name in ("low", "intermediate", "high")
            for idx in [[i for i, lab in enumerate(labels) if lab == name]] if idx},
        "intermediate": {
            "rmse_L_G": mean_over(main["dist"]["L-G"]["rmse"], mid),
            "rmse_net_G": mean_over(main["dist"]["net-G"]["rmse"], mid),
            "rmse_net_M": mean_over(main["dist"]["net-M"]["rmse"], mid),
            "rmse_G_M": mean_over(main["dist"]["G-M"]["rmse"], mid),
            "linearity_net": mean_over(main["linearity"]["net"], mid),
            "linearity_M": mean_over(main["linearity"]["M"], mid),
        },
        "band_sigma": [sig[i] for i in band],
        "sizes": {}, "widths": {}, "steps": {},
        "generalization": main["generalization"],
        "adam": main.get("adam", []),
    }
    for key, r in results["models"].items():
        n, w = (int(p[1:]) for p in key.split("_"))
        entry = {"rmse_net_G": mean_over(r["dist"]["net-G"]["rmse"], band),
                 "generalization": r["generalization"]["net"]}
        if w == config.width:
            out["sizes"][str(n)] = entry
        if n == config.n_train:
            out["widths"][str(w)] = entry
    for step, r in sorted(results["checkpoints"].items(), key=lambda kv: int(kv[0])):
        out["steps"][str(step)] = {"rmse_net_G": mean_over(r["dist"]["net-G"]["rmse"], band),
                                   "generalization": r["generalization"]["net"]}
    return out


def write_report(out_dir, seconds: float | None = None) -> dict:
    """Aggregate the stored analyses of a finished run into metrics.json and report.html."""
    from ..report.gaussian import gaussian_report

    out = Path(out_dir)
    config = cfgmod.from_dict(GaussianConfig, read_json(out / "config.json"))
    results = {"models": {}, "checkpoints": {}}
    main_key = f"n{config.n_train}_w{config.width}"
    for n, w in _model_keys(config):
        path = out / "analysis" / f"n{n}_w{w}.json"
        if not path.exists():
            raise ConfigError(f"{out} is missing {path.name}; rerun with the same config")
        results["models"][f"n{n}_w{w}"] = read_json(path)
    for step in config.checkpoints:
        results["checkpoints"][step] = read_json(out / "analysis" / f"{main_key}_step{step}.json")
    results["checkpoints"][config.steps] = results["models"][main_key]
    summary = _summary(config, results)
    metrics = {"config": cfgmod.to_dict(config), "dataset": read_json(out / "dataset.json"),
               "summary": summary,
               "main": {k: results["models"][main_key][k]
                        for k in ("sigma", "dist", "linearity", "generalization")}}
    metrics["main"]["weights"] = {k: v for k, v in
                                  results["models"][main_key]["weights"].items()
                                  if k != "example"}
    if seconds is not None:
        metrics["seconds"] = seconds
    write_json(out / "metrics.json", metrics)
    gaussian_report(out, config, results, summary)
    return metrics


EXPERIMENT = Experiment(
    name="gaussian", help="hidden Gaussian structure: network vs linear, Gaussian and "
    "empirical denoisers across noise levels", config=GaussianConfig, presets=PRESETS,
    run=gaussian_structure, report=write_report, plan=plan)
