"""Which closed-form denoiser explains a trained network (docs/science.md §5, §9).

At each noise level σ, a trained network D_θ and the closed-form denoisers of its
training set see the same held-out noisy images y = x + σ n (n fixed by the seed):

- empirical: the empirical optimum D_M (memorizes);
- gaussian: the optimum of the training set's Gaussian (Li, Dai & Qu);
- blurred: the δ-blurred optimum (Kaiser & Kollmann); smoothed: the smoothed closed form
  of Scarvelis et al.;
- LS, ELS: the local score machines of Kamb & Ganguli; PSPC: the patch set posterior
  composite of Niedoba et al. — each at the patch size, from ``patch_sizes``, that best
  predicts the network at that σ (``analysis.calibrate_patch_size``).

Per σ and model: r² of the model's output for the network's output and their RMSE.

The network's training set is, first found first: ``train`` (a file); the one its sweep
recorded beside it (``n<N>/split.json``, :mod:`.training_sets`: A's S1 or B's S2); the
first ``n_train`` images of ``data`` (the convention of ``pydiffgen memorization gap``).
The held-out images are the last ``n_heldout`` of the images it did not see: of the
sweep's de-duplicated images in neither set, or of ``data`` outside the training set.
Each σ's analysis is stored as soon as it exists (``analysis/sigma<i>.json``); a rerun
resumes.
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
from ._runs import Experiment, RunDir, named_preset, torch_threads
from .training_sets import load_split, split_path

__all__ = ["EXPERIMENT", "ClosedFormConfig", "MODELS", "PRESETS", "closed_form", "closed_forms",
           "compare", "plan", "preset", "tabulate", "training_images", "write_report"]

# the closed-form denoisers, in report order; the last three are calibrated patch models
MODELS = ("empirical", "gaussian", "blurred", "smoothed", "LS", "ELS", "PSPC")


@dataclass(frozen=True)
class ClosedFormConfig:
    """One comparison. CLI flags map 1:1 to these fields (``pydiffgen closed-form --help``)."""

    name: str = field(default="closed-form", metadata={"help": "run name; output in runs/<name>"})
    model: str = field(default="", metadata={
        "help": "the network: a model checkpoint (model.json / .safetensors) or its folder"})
    data: str = field(default="", metadata={
        "help": "the dataset it was trained on (default: the one its sweep recorded)"})
    data_options: tuple = ()
    train: str = field(default="", metadata={
        "help": "its training set, FILE or FILE:KEY (.npy, .npz, .safetensors; default: the "
                "split its sweep recorded beside it, else the first --n-train of --data)"})
    n_train: int | None = field(default=None, metadata={
        "help": "trained on the first N images of --data (none: all but the held-out ones)"})
    n_heldout: int = field(default=64, metadata={
        "help": "held-out images: the last ones the network did not see"})
    sigmas: tuple[float, ...] = field(default=(0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
                                      metadata={"help": "noise levels σ"})
    patch_sizes: tuple[int, ...] = field(default=(1, 3, 5, 7), metadata={
        "help": "odd patch sizes the LS / ELS / PSPC calibration chooses from"})
    blur_delta: float = field(default=0.1, metadata={"help": "δ of the blurred optimum"})
    smooth_s: float = field(default=0.1, metadata={"help": "s of the smoothed optimum"})
    seed: int = field(default=0, metadata={"help": "seed of the fixed noise and the samples"})
    n_samples: int = field(default=16, metadata={
        "help": "samples of the network and of each closed form from the same initial noise "
                "(0: none)"})
    sampler_steps: int = field(default=18, metadata={"help": "Heun steps of those samples"})
    threads: int | None = field(default=1, metadata={"help": "torch CPU threads (none: "
                                                             "leave torch's setting)"})
    device: str = "cpu"

    def __post_init__(self):
        cfgmod.check_positive_ints(self, ("n_heldout", "sampler_steps"))
        if self.n_samples < 0:
            raise ConfigError(f"n_samples must be >= 0, got {self.n_samples}")
        if self.n_train is not None and self.n_train < 1:
            raise ConfigError(f"n_train must be >= 1 or none, got {self.n_train}")
        if not self.sigmas or any(not (math.isfinite(s) and s > 0) for s in self.sigmas):
            raise ConfigError(f"sigmas must be positive and finite, got {self.sigmas}")
        if not self.patch_sizes or any(s < 1 or s % 2 == 0 for s in self.patch_sizes):
            raise ConfigError(f"patch_sizes must be odd positive integers, "
                              f"got {self.patch_sizes}")
        if not (self.blur_delta > 0 and self.smooth_s > 0):
            raise ConfigError(f"blur_delta and smooth_s must be > 0, got {self.blur_delta}, "
                              f"{self.smooth_s}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or none, got {self.threads}")


PRESETS: dict[str, ClosedFormConfig] = {
    # a first look: 4 noise levels, patch sizes 3 and 5, 16 held-out images
    "quick": ClosedFormConfig(name="closed-form-quick", n_heldout=16,
                              sigmas=(0.05, 0.2, 1.0, 5.0), patch_sizes=(3, 5)),
}

preset = partial(named_preset, PRESETS)


def plan(config: ClosedFormConfig) -> str:
    c = config
    found = split_path(c.model) if c.model and not c.train else None
    if c.train:
        trained = f"trained on {c.train}; held out: the last {c.n_heldout} images of " \
                  f"{c.data or '(--data missing)'} not in it"
    elif found:
        trained = f"trained on the sweep's {found[1]} ({found[0]}); held out: the last " \
                  f"{c.n_heldout} of its de-duplicated images in neither set"
    else:
        n_train = "all but the held-out" if c.n_train is None else f"the first {c.n_train}"
        trained = f"data {c.data or '(--data missing)'} {dict(c.data_options) or ''}: " \
                  f"trained on {n_train} images, the last {c.n_heldout} held out"
    return "\n".join([
        f"closed-form {c.name!r}: network {c.model or '(--model missing)'}",
        f"  {trained}",
        f"  {len(c.sigmas)} noise levels {', '.join(f'{s:g}' for s in c.sigmas)}: r² and "
        f"RMSE of {', '.join(MODELS)}",
        f"  LS / ELS / PSPC patch size calibrated per σ among "
        f"{', '.join(map(str, c.patch_sizes))}",
        f"  {c.n_samples} deterministic Heun samples ({c.sampler_steps} steps) of the network "
        "and of every closed form from the same initial noise" if c.n_samples else
        "  no samples",
    ])


def _data(config: ClosedFormConfig):
    """(training images [N, *F], held-out images [n_heldout, *F], where they came from)."""
    if not config.model:
        raise ConfigError("--model is required: a model checkpoint or its folder")
    found = None if config.train else split_path(config.model)
    if found:
        if config.n_train is not None:
            raise ConfigError(f"--n-train does not apply: {config.model}'s sweep recorded its "
                              f"training set in {found[0]}")
        train, unseen, about = load_split(*found)
        if config.data and config.data != about["dataset"]:
            raise ConfigError(f"{config.model} was trained on {about['dataset']} ({found[0]}), "
                              f"not --data {config.data}")
        name = about["dataset"]
        source = f"the sweep's {found[1]} ({found[0]})"
    elif config.data:
        train, unseen = _given(config)
        name = config.data
        source = config.train or f"the first {len(train)} images of {config.data}"
    else:
        raise ConfigError(f"cannot tell what {config.model} was trained on: no split.json of "
                          "a sweep beside it; pass --train FILE[:KEY] (e.g. a sweep's "
                          "n<N>/samples.safetensors:S1) and --data NAME, or --data NAME "
                          "--n-train N")
    if len(unseen) < config.n_heldout:
        raise ConfigError(f"only {len(unseen)} images of {name} are held out from "
                          f"{config.model}; lower --n-heldout (now {config.n_heldout})")
    return train, unseen[len(unseen) - config.n_heldout:], {"name": name, "source": source}


def _given(config: ClosedFormConfig):
    """(training images, the images of ``data`` not among them) from ``train`` (a file)
    or the first ``n_train`` images of ``data``."""
    from ..data import load
    from .audit import load_images

    x = load(config.data, **dict(config.data_options))
    if config.train:
        train = load_images(config.train)[0]
        return train, x[~training_images(x, train)]
    n_train = len(x) - config.n_heldout if config.n_train is None else config.n_train
    if n_train < 1 or n_train + config.n_heldout > len(x):
        raise ConfigError(f"{config.data} has {len(x)} images: n_train={n_train} and "
                          f"n_heldout={config.n_heldout} do not both fit")
    return x[:n_train], x[n_train:]


def training_images(x: torch.Tensor, train: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """bool [M]: which images of x [M, *F] are in ``train`` [N, *F], up to an RMS difference
    of half an 8-bit step (1/255 in [-1, 1]), so that a file's 8-bit rounding still matches."""
    if x.shape[1:] != train.shape[1:]:
        raise ConfigError(f"the training set's images are {list(train.shape[1:])}, the "
                          f"dataset's {list(x.shape[1:])}")
    t = train.flatten(1).double()
    found = [torch.cdist(c.flatten(1).double(), t).amin(dim=1).square() <= t.shape[1] / 255**2
             for c in x.split(chunk)]
    return torch.cat(found)


def _network(config: ClosedFormConfig, shape):
    from ..checkpoint import load_model

    net = load_model(config.model, device=config.device)
    stored = list((getattr(net, "meta", None) or {}).get("data_shape") or shape)
    if getattr(net, "name", "") == "mlp" or stored != list(shape):
        raise ConfigError(f"{config.model} is not an image denoiser of its training set's "
                          f"{list(shape)} images (it was trained on {stored}, model "
                          f"{getattr(net, 'name', '?')!r}); the patch models need images")
    return net


def closed_forms(config: ClosedFormConfig, train) -> dict:
    """The global closed forms of ``train`` [N, *F] (on ``config.device``), by name."""
    from ..analysis import (
        BlurredEmpiricalDenoiser,
        EmpiricalDenoiser,
        GaussianDenoiser,
        SmoothedEmpiricalDenoiser,
    )

    dev = config.device
    return {"empirical": EmpiricalDenoiser(train),
            "gaussian": GaussianDenoiser.fit(train).to(dev),
            "blurred": BlurredEmpiricalDenoiser(train, config.blur_delta),
            "smoothed": SmoothedEmpiricalDenoiser(train, config.smooth_s, seed=config.seed)
            .to(dev)}


@torch.no_grad()
def compare(config: ClosedFormConfig, sigma: float, net, train, held, global_models) -> dict:
    """r² and RMSE of every closed form for the network at ``sigma`` on the held-out images
    ``held`` [M, C, H, W] (noise fixed by ``config.seed``): the global ones,
    ``global_models`` (:func:`closed_forms` of ``train`` [N, C, H, W]), and LS, ELS, PSPC at
    their calibrated patch size among ``config.patch_sizes`` (r² of every candidate size)."""
    from ..analysis import calibrate_patch_size, denoiser_outputs, output_distance, r_squared

    _, D_net = denoiser_outputs(net, held, sigma, seed=config.seed)
    res = {"sigma": sigma, "r2": {}, "rmse": {}, "patch_size": {}, "calibration": {}}
    for name, model in global_models.items():
        _, D = denoiser_outputs(model, held, sigma, seed=config.seed)
        res["r2"][name] = r_squared(D_net, D)
        res["rmse"][name] = output_distance(D_net, D)["rmse"]
    for name in ("LS", "ELS", "PSPC"):
        cal = calibrate_patch_size(net, train, held, [sigma], config.patch_sizes, model=name,
                                   seed=config.seed)
        res["r2"][name], res["rmse"][name] = cal.best_r2[0], cal.best_rmse[0]
        res["patch_size"][name] = cal.best[0]
        res["calibration"][name] = dict(zip(map(str, cal.candidates), cal.r2[0], strict=True))
    return res


def calibrated_size(per_sigma: list[dict], name: str):
    """σ -> the patch size calibrated for model ``name`` at the stored σ nearest in log σ
    (the patch size of a sampling step between two calibrated noise levels)."""
    sigmas = [r["sigma"] for r in per_sigma]

    def size(sigma: float) -> int:
        i = min(range(len(sigmas)), key=lambda j: abs(math.log(sigmas[j] / max(sigma, 1e-12))))
        return int(per_sigma[i]["patch_size"][name])

    return size


@torch.no_grad()
def _samples(config: ClosedFormConfig, net, train, global_models, per_sigma) -> dict:
    """Deterministic Heun samples of the network and of every closed form from the same
    initial noise (one seed), with each closed form's per-sample cosine to the network's
    sample and the fraction of its samples that copy a training image."""
    from ..analysis import LocalEmpiricalDenoiser, PatchPosteriorDenoiser
    from ..diffusion.sampling import sample
    from ..metrics import memorization, paired_cosine

    def draw(denoiser):
        return sample(denoiser, config.n_samples, tuple(train.shape[1:]), method="heun",
                      steps=config.sampler_steps, seed=config.seed,
                      device=config.device).cpu()

    models = {**global_models,
              "LS": LocalEmpiricalDenoiser(train, calibrated_size(per_sigma, "LS")),
              "ELS": LocalEmpiricalDenoiser(train, calibrated_size(per_sigma, "ELS"),
                                            equivariant=True),
              "PSPC": PatchPosteriorDenoiser(train, calibrated_size(per_sigma, "PSPC"))}
    x_net = draw(net)
    out = {"network": {"samples": x_net.tolist(),
                       "memorized": memorization(x_net, train.cpu()).fraction}}
    for name in MODELS:
        x = draw(models[name])
        out[name] = {"samples": x.tolist(), "cosine": paired_cosine(x, x_net).tolist(),
                     "memorized": memorization(x, train.cpu()).fraction}
    return out


def closed_form(config: ClosedFormConfig, out_dir=None, *, resume: bool = True,
                progress: bool = True, log=None) -> dict:
    """Run (or resume) the comparison; write analysis/sigma<i>.json, metrics.json and
    report.html. Returns the metrics dict. (``progress`` is accepted for the common
    experiment signature; nothing here trains.)"""
    run = RunDir(out_dir, config, resume=resume, log=log, tag="closed-form")
    t0 = time.perf_counter()
    with torch_threads(config.threads):
        train, held, about = _data(config)
        net = _network(config, train.shape[1:]).eval()
        run.claim("run")
        train, held = train.to(config.device), held.to(config.device)
        models = closed_forms(config, train)
        per_sigma = [run.cached(f"sigma{i}", lambda s=s: compare(config, s, net, train,
                                                                  held, models))
                     for i, s in enumerate(config.sigmas)]
        if config.n_samples:
            run.cached("samples", lambda: _samples(config, net, train, models, per_sigma))
    run.write_json("dataset.json", {**about, "train": len(train),
                                    "held_out": len(held), "shape": list(train.shape[1:])})
    metrics = write_report(run.path, seconds=time.perf_counter() - t0)
    run.log(f"report: {run.path / 'report.html'}")
    return metrics


def write_report(out_dir, seconds: float | None = None) -> dict:
    """Aggregate the stored per-σ analyses into metrics.json and report.html."""
    from ..report.closed_form import closed_form_report

    out = Path(out_dir)
    config = cfgmod.from_dict(ClosedFormConfig, read_json(out / "config.json"))
    per_sigma = []
    for i in range(len(config.sigmas)):
        path = out / "analysis" / f"sigma{i}.json"
        if not path.exists():
            raise ConfigError(f"{out} is missing {path.name}; rerun with the same config")
        per_sigma.append(read_json(path))
    metrics = {"config": cfgmod.to_dict(config), "dataset": read_json(out / "dataset.json"),
               **tabulate(per_sigma)}
    if config.n_samples:
        path = out / "analysis" / "samples.json"
        if not path.exists():
            raise ConfigError(f"{out} is missing {path.name}; rerun with the same config")
        metrics["samples"] = read_json(path)
    if seconds is not None:
        metrics["seconds"] = seconds
    write_json(out / "metrics.json", metrics)
    closed_form_report(out, metrics)
    return metrics


def tabulate(per_sigma: list[dict]) -> dict:
    """The per-σ results of :func:`compare` as curves: {"sigma": [S], "r2" and "rmse":
    {model: [S]}, "patch_size": {LS/ELS/PSPC: [S]}, "calibration": [S], "best": [S] (the
    model of largest r² at each σ)}."""
    return {"sigma": [r["sigma"] for r in per_sigma],
            "r2": {m: [r["r2"][m] for r in per_sigma] for m in MODELS},
            "rmse": {m: [r["rmse"][m] for r in per_sigma] for m in MODELS},
            "patch_size": {m: [r["patch_size"][m] for r in per_sigma]
                           for m in ("LS", "ELS", "PSPC")},
            "calibration": [r["calibration"] for r in per_sigma],
            "best": [max(MODELS, key=r["r2"].__getitem__) for r in per_sigma]}


def summary(metrics: dict) -> list[str]:
    """Per σ: the closed form that best predicts the network, with every model's r²."""
    lines = [f"{'sigma':>8}  {'best':>9}  " + "  ".join(f"{m:>9}" for m in MODELS)
             + "  patch LS/ELS/PSPC"]
    for i, s in enumerate(metrics["sigma"]):
        sizes = "/".join(str(metrics["patch_size"][m][i]) for m in ("LS", "ELS", "PSPC"))
        lines.append(f"{s:>8.3g}  {metrics['best'][i]:>9}  "
                     + "  ".join(f"{metrics['r2'][m][i]:>9.3f}" for m in MODELS)
                     + f"  {sizes}")
    if "samples" in metrics:
        sam = metrics["samples"]
        lines.append("samples from the network's initial noise (median cosine to the network; "
                     "memorized): " + ", ".join(
                         f"{m} {sorted(sam[m]['cosine'])[len(sam[m]['cosine']) // 2]:.3f}; "
                         f"{100 * sam[m]['memorized']:.0f}%" for m in MODELS))
    return lines


EXPERIMENT = Experiment(
    name="closed-form", help="which closed-form denoiser (empirical, Gaussian, blurred, "
    "smoothed, LS, ELS, PSPC) explains a trained network, per noise level",
    config=ClosedFormConfig, presets=PRESETS, run=closed_form, report=write_report,
    plan=plan, summary=summary)
