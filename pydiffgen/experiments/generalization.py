"""The memorization-to-generalization sweep of Kadkhodaie et al. (ICLR 2024, §2, Fig. 2).

For each training-set size N: de-duplicate the data, take two disjoint subsets S1, S2 of
size N, train one denoiser on each, sample both from the same seeds (same initial noise,
same injected noise), and measure how close the two models' samples are to each other
and to their training images. Small N: each model reproduces its own training images.
Large N: the two models generate nearly the same images, far from every training image.

Every (N, subset) model, its samples and the per-N metrics are written to disk as soon
as they exist, so a killed sweep rerun with the same config resumes where it stopped.
Under ``torchrun`` the independent (N, subset) trainings, then the per-N evaluations, are
spread over the ranks; rank 0 writes the report once every rank is done.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .. import config as cfgmod
from ..diffusion.sampling import check_method
from ..errors import ConfigError
from ..io import atomic_path, read_json, write_json
from ._runs import (
    Eta,
    Experiment,
    RunDir,
    duration,
    log_to_stderr,
    named_preset,
    torch_threads,
    training_rate,
)
from .sweep_closed_form import attach_closed_form, closed_form_sizes
from .training_sets import record_splits

_FOLDS = 5  # of the identification bound's cross-validation (Yi, Sun & Li 2023)


@dataclass(frozen=True)
class SweepConfig:
    """One sweep. CLI flags map 1:1 to these fields (``pydiffgen sweep --help``)."""

    name: str = field(default="sweep", metadata={"help": "run name; output in runs/<name>"})
    dataset: str = field(default="digits", metadata={"help": "pydiffgen.data.load name"})
    dataset_options: tuple = ()
    sizes: tuple[int, ...] = field(default=(1, 10, 100, 1000),
                                   metadata={"help": "training-set sizes N"})
    dedup_threshold: float | None = field(
        default=0.95, metadata={"help": "drop one of each pair with |corr| above (none: keep)"})
    model: str = field(default="bf_unet", metadata={"help": "pydiffgen.models name"})
    model_options: tuple = ()
    steps: int = field(default=2000, metadata={"help": "training steps per model"})
    batch_size: int = 64
    lr: float = 1e-3
    lr_halve_every: int | None = None
    ema: float | None = None
    sigma_dist: str = field(default="kadkhodaie", metadata={"help": "kadkhodaie | edm"})
    sigma_max: float = 2.0
    same_init: bool = field(default=False,
                            metadata={"help": "initialize models A and B identically"})
    sampler: str = field(default="kadkhodaie", metadata={"help": "kadkhodaie|euler|heun|ddpm"})
    sampler_options: tuple = ()
    n_samples: int = field(default=64, metadata={"help": "samples per model"})
    sample_seed: int = 0
    seed: int = field(default=0, metadata={"help": "split, initialization and training seed"})
    center: bool = field(default=False,
                         metadata={"help": "remove each image's mean before cosines"})
    n_eval: int = field(default=64, metadata={"help": "images per PSNR curve"})
    psnr_levels: tuple[float, ...] = field(
        default=(0.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0),
        metadata={"help": "input PSNRs (dB) of the PSNR curves"})
    n_baseline: int = field(default=1000, metadata={"help": "S1 images in the S1-S2 baseline"})
    jacobian_images: int = field(
        default=2, metadata={"help": "held-out images per N for Jacobian spectra (0: skip)"})
    jacobian_sigmas: tuple[float, ...] = field(
        default=(0.1, 0.5, 2.0), metadata={"help": "noise levels of the Jacobian spectra"})
    condition: str = field(default="none", metadata={
        "help": "none, or classes: class-conditional pairs (the dataset's labels, the unet "
                "model), sampled class by class, memorization reported per class"})
    label_dropout: float = field(default=0.1, metadata={
        "help": "with --condition classes: the probability a training label is dropped "
                "(the model also learns the unconditional denoiser, for guidance)"})
    guidance: float | None = field(default=None, metadata={
        "help": "with --condition classes: classifier-free guidance weight w of the samples "
                "(none: the conditional model)"})
    workers: int = field(default=1, metadata={
        "help": "on CPU, models trained at once, each in its own process with an equal "
                "share of the --threads (at most --threads of them; 1: one after the "
                "other, each with all threads)"})
    encoder: str = field(default="pixel", metadata={
        "help": "encoder of the feature-space section (pixel, dinov2:DIR, clip:DIR, "
                "inception:FILE; local weights)"})
    device: str = "cpu"

    def __post_init__(self):
        if not self.sizes or any(int(n) < 1 for n in self.sizes):
            raise ConfigError(f"sizes must be positive integers, got {self.sizes}")
        if len(set(self.sizes)) != len(self.sizes):
            raise ConfigError(f"sizes must be distinct, got {self.sizes}")
        for name in ("steps", "batch_size", "n_eval", "n_baseline", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if 2 * self.n_samples < _FOLDS:  # the identification bound's folds split 2·n_samples
            raise ConfigError(f"n_samples must be >= {(_FOLDS + 1) // 2} (the identification bound "
                              f"splits both models' samples into {_FOLDS} folds), got "
                              f"{self.n_samples}")
        check_method(self.sampler, dict(self.sampler_options))
        _check_names(self.dataset, self.model)
        if self.dedup_threshold is not None and not 0 < self.dedup_threshold <= 1:
            raise ConfigError(f"dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        if self.jacobian_images < 0:
            raise ConfigError(f"jacobian_images must be >= 0, got {self.jacobian_images}")
        if self.condition not in CONDITIONS:
            raise ConfigError(f"condition must be one of {', '.join(CONDITIONS)}, got "
                              f"{self.condition!r}")
        if self.condition == "classes" and self.model != "unet":
            raise ConfigError(f"condition=classes trains the class-conditional unet, not "
                              f"{self.model!r}; pass --model unet")
        if not 0 <= self.label_dropout < 1:
            raise ConfigError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.guidance is not None and (self.condition != "classes" or not self.label_dropout):
            raise ConfigError("guidance needs condition=classes and label_dropout > 0 (the "
                              "unconditional denoiser it guides against)")
        if self.jacobian_images and (not self.jacobian_sigmas
                                     or any(not v > 0 for v in self.jacobian_sigmas)):
            raise ConfigError(f"jacobian_sigmas must be positive, got {self.jacobian_sigmas}")


CONDITIONS = ("none", "classes")


def _check_names(dataset: str, model: str) -> None:
    """Refuse an unknown dataset or model name when the config is made (``--dry-run``
    too), not after the first models have trained."""
    from ..data import DATASETS
    from ..models import MODELS

    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; known: {', '.join(MODELS)}")


# Presets: "demo" is what `make demo` runs (see README for what it shows).
PRESETS: dict[str, SweepConfig] = {
    # 8×8 digits: N = 2 copies training images, N = 640 (the most de-duplicated digits
    # allow for two disjoint sets) generalizes. The σ-conditioned UNet with the
    # deterministic Heun sampler, because a bias-free blind model reproduces its training
    # images only up to a scale factor, which the L2 memorization ratio does not count.
    # EMA weights and a halving learning rate: the two models' agreement at N = 640 is
    # limited by SGD noise in the last weights, which averaging removes; 256 samples
    # narrow the lead's interval. Measured at N = 640 (1 thread): the paired median rose
    # from 0.944 to 0.967, its lead over both controls from +0.021 [−0.011, +0.033] (64
    # samples, last weights) to +0.044 [+0.037, +0.049], for ≈ 9% more compute.
    # Two workers: the models train two at once with one thread each (--threads 1: one
    # after the other, the same numbers). One thread does ≈ 1.4× the images per CPU-second
    # of two on this small model, and the two-thread run kept only 1.27 of 2 cores busy
    # (14 min 21 s quiet, 16.5 CPU-min): the trainings take about half the time.
    "demo": SweepConfig(
        name="demo", dataset="digits", sizes=(2, 16, 128, 640), model="unet",
        model_options=(("levels", 2), ("width", 32)), steps=1500, batch_size=64,
        lr_halve_every=500, ema=0.995, sigma_dist="edm", sampler="heun", n_samples=256,
        center=True, workers=2,
    ),
    # the demo's sweep with more sizes, samples and training (≈ 35 min on a 2-core CPU)
    "digits": SweepConfig(
        name="digits", dataset="digits", sizes=(2, 8, 32, 128, 320, 640), model="unet",
        model_options=(("levels", 2), ("width", 32)), steps=3000, batch_size=64,
        sigma_dist="edm", sampler="heun", n_samples=256, center=True,
    ),
    # the paper's own setting: blind bias-free UNet, σ = U², stochastic ascent (Alg. 1)
    "digits-blind": SweepConfig(
        name="digits-blind", dataset="digits", sizes=(2, 8, 32, 128, 320, 640),
        model="bf_unet", model_options=(("levels", 2), ("width", 32)), steps=3000,
        batch_size=64, sampler="kadkhodaie", n_samples=256, center=True,
    ),
    # 32×32 photograph patches up to N = 10^4 (a GPU run; see README for times)
    "patches32": SweepConfig(
        name="patches32", dataset="patches", dataset_options=(("size", 32), ("stride", 8)),
        sizes=(1, 10, 100, 1000, 10000), model="unet",
        model_options=(("levels", 3), ("width", 64)), steps=20000, batch_size=128,
        lr_halve_every=8000, sigma_dist="edm", sampler="heun", n_samples=256, center=True,
        device="cuda",
    ),
}


preset = partial(named_preset, PRESETS)


def plan(config: SweepConfig) -> str:
    """Human-readable plan of what a sweep will do, with an estimate of its time
    (``--dry-run``). Checks what the run would before training: the dataset loads and
    still holds two disjoint subsets of the largest N after de-duplication."""
    c = config
    x, _, n_raw, _ = _data(config, log=lambda msg: None)
    lines = [
        f"sweep {c.name!r}: dataset {c.dataset} {dict(c.dataset_options) or ''}".rstrip(),
        f"  de-duplicate at |corr| > {c.dedup_threshold}" if c.dedup_threshold else
        "  no de-duplication",
        f"  sizes N = {', '.join(map(str, c.sizes))}: two disjoint subsets each "
        f"({2 * len(c.sizes)} models)",
        f"  model {c.model} {dict(c.model_options)}; {c.steps} steps, batch {c.batch_size}, "
        f"lr {c.lr}" + (f" halved every {c.lr_halve_every} steps" if c.lr_halve_every else "")
        + (f", EMA {c.ema}" if c.ema else "") + f", sigma {c.sigma_dist}",
        f"  {c.n_samples} samples per model with {c.sampler} (seed {c.sample_seed}), "
        "the same seeds for both models",
        "  metrics: paired cosine, nearest-training cosine, S1-S2 baseline, memorization "
        "ratio, train/test PSNR curves",
    ]
    if c.jacobian_images:
        lines.append(f"  Jacobian spectra of both models at {c.jacobian_images} held-out images, "
                     f"sigma = {', '.join(f'{v:g}' for v in c.jacobian_sigmas)}")
    lines[0] += f": {n_raw} images, {len(x)} after de-duplication (the largest N needs " \
                f"{2 * max(c.sizes)})"
    classes = 10 if c.condition == "classes" else 0  # the rate hardly depends on the count
    workers = _workers(c)
    threads = torch.get_num_threads() // workers
    with torch_threads(threads):  # the rate of one model as one worker trains it
        rate = training_rate(c.model, _model_options(c, classes), tuple(x.shape[1:]),
                             _train_config(c, c.seed, classes))
    # the workers' rates add up when each has cores of its own (a bound: they share memory)
    train_s = 2 * len(c.sizes) * c.steps * c.batch_size / (rate * workers)
    at_once = f", {workers} at once" if workers > 1 else ""
    lines.append(f"  estimated training time: {duration(train_s)} ({2 * len(c.sizes)} models × "
                 f"{c.steps} steps × {c.batch_size} images{at_once}, at {rate:.0f} images/s "
                 f"each, measured here with {threads} thread(s)); sampling and evaluation come "
                 "on top. An estimate: other jobs on the machine slow it down")
    return "\n".join(lines)


def generalization_sweep(config: SweepConfig, out_dir=None, *, resume: bool = True,
                         progress: bool = True, log=None) -> dict:
    """Run (or resume) the sweep; write models, samples, metrics.json and report.html.

    Returns the metrics dict also written to ``<out_dir>/metrics.json``. With an initialized
    process group of R > 1 ranks (``pydiffgen.distributed.init``, e.g. under torchrun) every
    rank must call it: the unfinished (N, subset) trainings, then the unfinished per-N
    evaluations, go round-robin over the ranks (each result written by the rank that made
    it), and rank 0 writes the report after a barrier; every rank returns the metrics.
    """
    from .. import distributed as dist
    from ..data import disjoint_split

    rank, world = dist.rank(), dist.world_size()
    if world > 1:
        base_log = log or log_to_stderr

        def log(msg):
            base_log(f"[rank {rank}] {msg}")
    with RunDir(out_dir, config, resume=resume, log=log, tag="sweep") as run:
        out = run.path
        dist.run_on_main(lambda: run.claim("sweep"))
        progress = progress and rank == 0
        t_start = time.perf_counter()
        x, groups, n_raw, labels = _data(config, run.log)
        num_classes = 0 if labels is None else int(labels.max()) + 1
        encoder = _feature_encoder(config)
        t_data = time.perf_counter() - t_start
        heldout = _heldout(config, run, x, groups)
        if rank == 0:  # each N's S1 and S2, to analyse its models later (closed-form)
            record_splits(out, config, x, lambda n: _split(disjoint_split, x, n, config.seed,
                                                           groups))
        dist.barrier()  # every rank lists the unfinished work before any rank adds to it
        todo = [n for n in sorted(config.sizes)
                if not (resume and (out / f"n{n}" / "metrics.json").exists())]
        if world > 1:  # the trainings first, spread over the ranks, then the evaluations
            runs = [(n, sub) for n in todo for sub in "AB"
                    if not (out / f"n{n}" / sub / "model.json").exists()]
            eta = Eta(len(runs[rank::world]), run.log)
            for n, sub in runs[rank::world]:
                idx = _split(disjoint_split, x, n, config.seed, groups)[sub == "B"]
                _model(config, run, n, sub, x[idx], progress, eta,
                       labels=None if labels is None else labels[idx],
                       num_classes=num_classes)
            dist.barrier()
        workers = _workers(config) if world == 1 else 1
        eta = Eta(2 * len(todo), run.log) if world == 1 and workers == 1 else None
        with _trainers(config, run, x, groups, labels, todo, workers) as trained:
            for n in todo[rank::world]:
                t0 = time.perf_counter()
                trained(n)
                idx1, idx2 = _split(disjoint_split, x, n, config.seed, groups)
                result = _run_size(config, run, x[idx1], x[idx2], progress, heldout=heldout,
                                   eta=eta, labels=None if labels is None else
                                   (labels[idx1], labels[idx2], num_classes))
                run.write_json(f"n{n}/metrics.json", result)
                run.write_json(f"n{n}/time.json", {"seconds": time.perf_counter() - t0})
        for n in sorted(set(config.sizes) - set(todo)):
            run.log(f"N={n}: done earlier, loading {out / f'n{n}' / 'metrics.json'}")
        dist.barrier()
        _feature_sizes(config, run, encoder, sorted(config.sizes)[rank::world])
        closed_form_sizes(config, run, x, sorted(config.sizes)[rank::world])
        dist.barrier()

        def report():
            from ..report.provenance import run_metadata

            run.write_json("dataset.json", {"name": config.dataset, "raw": n_raw,
                                            "deduplicated": len(x), "shape": list(x.shape[1:])})
            run.write_json("run.json", {**run_metadata(), "world_size": world,
                                        "data_seconds": t_data})
            return write_report(out, seconds=time.perf_counter() - t_start)

        metrics = dist.run_on_main(report)
        if rank == 0:
            run.log(f"report: {out / 'report.html'}")
        return metrics


def write_report(out_dir, seconds: float | None = None) -> dict:
    """Aggregate the stored per-N results of a finished sweep into metrics.json and
    report.html (``pydiffgen report``). Needs no dataset and no model."""
    from ..report.sweep import sweep_report

    out = Path(out_dir)
    config = cfgmod.from_dict(SweepConfig, read_json(out / "config.json"))
    missing = [n for n in config.sizes if not (out / f"n{n}" / "metrics.json").exists()]
    if missing:
        raise ConfigError(
            f"{out} is missing results for N = {', '.join(map(str, missing))}; "
            "rerun the sweep with the same config to finish them"
        )
    per_n = {n: read_json(out / f"n{n}" / "metrics.json") for n in sorted(config.sizes)}
    # how this run was made (absent in runs from before it was recorded)
    about = read_json(out / "run.json") if (out / "run.json").exists() else {}
    times = {n: read_json(out / f"n{n}" / "time.json")["seconds"] for n in per_n
             if (out / f"n{n}" / "time.json").exists()}
    metrics = {
        "config": cfgmod.to_dict(config),
        "dataset": read_json(out / "dataset.json"),
        "sizes": {str(n): _summary(per_n[n]) for n in per_n},
    }
    _attach_features(out, per_n, metrics)
    attach_closed_form(out, per_n, metrics)
    if seconds is not None:
        metrics["seconds"] = seconds
    write_json(out / "metrics.json", metrics)
    sweep_report(out, config, per_n, metrics, about={**about, "size_seconds": times})
    return metrics


# the feature-space section: half-sample replicates per interval; the rows every set needs
# (half-samples of k+1 = 6 for PRDC; below, each metric would be noise, or refused); C_T's
# cell threshold (dgm-eval's 20/m assumes m ≥ 10⁴ samples; a sweep draws n_samples ≈ 64)
FEATURE_N_BOOT = 30
FEATURE_MIN_ROWS = 12
FEATURE_OPTIONS = {"ct": {"tau": 0.05}}


def _feature_encoder(config: SweepConfig):
    """The feature-space section's encoder, loaded before any training: a bad
    ``--encoder`` fails first."""
    from ..features import load_encoder

    return load_encoder(config.encoder, device=config.device)


def _feature_sizes(config: SweepConfig, run: RunDir, encoder, sizes) -> None:
    """``n<N>/features.json`` for each N of ``sizes`` that lacks it: the field's metrics
    (:data:`~pydiffgen.experiments.feature_metrics.METRICS`) of model A's samples (fake,
    clipped to [-1, 1]) against S1 (its training set) and S2 (held out: the test set, and
    the real set of PRDC, FD and KID), on ``encoder``'s features, each with its interval;
    a metric the sizes are too small for is listed as skipped (all of them below
    ``FEATURE_MIN_ROWS`` samples or training images)."""
    from safetensors.torch import load_file

    from .feature_metrics import METRICS, encode_sets, measure

    for n in sizes:
        if (run.path / f"n{n}" / "features.json").exists():
            continue
        s = load_file(str(run.path / f"n{n}" / "samples.safetensors"))
        if min(len(s["A"]), n) < FEATURE_MIN_ROWS:
            run.write_json(f"n{n}/features.json", {
                "encoder": encoder.name, "feature_dim": None, "metrics": {}, "skipped": {
                    "all": f"needs {FEATURE_MIN_ROWS} samples and training images"}})
            continue
        run.log(f"N={n}: feature-space metrics ({encoder.name})")
        sets = encode_sets({"fake": s["A"].clamp(-1, 1), "train": s["S1"], "test": s["S2"]},
                           encoder, progress=False)
        rows, skipped = measure({**sets, "real": sets["test"]}, METRICS,
                                n_boot=FEATURE_N_BOOT, seed=config.seed,
                                options=FEATURE_OPTIONS, skip_small=True)
        run.write_json(f"n{n}/features.json", {
            "encoder": encoder.name, "feature_dim": int(sets["train"].shape[1]),
            "metrics": rows, "skipped": skipped})


def _attach_features(out: Path, per_n: dict, metrics: dict) -> None:
    """Each N's feature-space rows into ``per_n[N]["features"]`` and ``metrics["features"]``
    (runs made before the section have no ``features.json``: nothing is added)."""
    if not all((out / f"n{n}" / "features.json").exists() for n in per_n):
        return
    for n in per_n:
        per_n[n]["features"] = read_json(out / f"n{n}" / "features.json")
    metrics["features"] = {str(n): per_n[n]["features"] for n in per_n}


def _data(config: SweepConfig, log):
    """(images [N, *F] after de-duplication, their groups or None, N before it, their
    class labels [N] or None); ``log`` receives one line. Labels are read only for
    ``condition="classes"``, which needs a dataset that has them."""
    from ..data import deduplicate, load

    x, info = load(config.dataset, return_info=True, **dict(config.dataset_options))
    groups = info.get("groups")
    labels = info.get("labels") if config.condition == "classes" else None
    if config.condition == "classes" and labels is None:
        raise ConfigError(f"condition=classes needs class labels, but {config.dataset} has "
                          "none; use a labelled dataset (e.g. digits) or condition=none")
    n_raw = len(x)
    if config.dedup_threshold is not None:
        x, kept = deduplicate(x, threshold=config.dedup_threshold, return_index=True)
        groups = groups[kept] if groups is not None else None
        labels = labels[kept] if labels is not None else None
    log(f"{config.dataset}: {n_raw} images, {len(x)} after de-duplication, "
            f"shape {tuple(x.shape[1:])}")
    if 2 * max(config.sizes) > len(x):
        raise ConfigError(
            f"the largest N={max(config.sizes)} needs {2 * max(config.sizes)} distinct images "
            f"but {config.dataset} has {len(x)} after de-duplication; lower --sizes"
        )
    return x, groups, n_raw, labels


def _heldout(config: SweepConfig, run: RunDir, x, groups):
    """Images in no training set of the sweep, for the Jacobian spectra (None: skip them)."""
    if not config.jacobian_images:
        return None
    from ..data import disjoint_split
    from .jacobian_spectra import heldout_images

    heldout = heldout_images(x, *_split(disjoint_split, x, max(config.sizes), config.seed,
                                        groups), config.jacobian_images, config.seed)
    if heldout is None:
        run.log("no image is left outside the largest S1 and S2: no Jacobian spectra")
    return heldout


def _split(disjoint_split, x, n, seed, groups):
    """S1, S2 index tensors: disjoint, size n, nested across N for a fixed seed."""
    _, _, idx1, idx2 = disjoint_split(x, n, seed=seed, groups=groups, return_index=True)
    return idx1, idx2


def _model(config: SweepConfig, run: RunDir, n: int, sub: str, data, progress,
           eta: Eta | None = None, labels=None, num_classes: int = 0):
    """Model ``sub`` (A on S1, B on S2) of size N = n, trained or loaded from ``n<n>/<sub>``;
    ``eta`` logs the sweep's progress; ``labels`` [n]: its images' classes, for a
    class-conditional model over ``num_classes`` (every class of the sweep's data, so that
    both models of every N know all of them, even when their few images miss some)."""

    if eta is not None:
        eta.step(f"N={n} {sub}")

    seed = config.seed if sub == "A" or config.same_init else config.seed + 1
    return run.trained_model(f"n{n}/{sub}", config.model, _model_options(config, num_classes),
                             lambda: data, _train_config(config, seed, num_classes),
                             labels=labels, progress=progress, label=f"N={n} {sub}")


def _workers(config: SweepConfig) -> int:
    """The processes that train the sweep's models at once: ``config.workers`` on CPU, at
    most the torch threads (``--threads``), which they share equally."""
    if config.device != "cpu":
        return 1
    return max(1, min(config.workers, torch.get_num_threads()))


@contextmanager
def _trainers(config: SweepConfig, run: RunDir, x, groups, labels, sizes, workers: int):
    """``trained(n)``: returns once both models of size n are trained and stored.

    With ``workers`` > 1 every unfinished model of ``sizes`` trains ahead in that many
    spawned processes, one thread share each, in the sweep's order (both models of one N
    at once), while the sweep evaluates the sizes already trained: a small model keeps
    one core busy with one thread, not two (measured on 2 cores: 1.3 of them with two
    threads). Each model's numbers depend only on its threads per model, so a resumed or
    repeated run with the same ``--threads`` gives the same ones. With one worker the
    sweep trains each model itself when it needs it (``trained`` does nothing).
    """
    if workers == 1:
        yield lambda n: None
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from ..data import disjoint_split

    num_classes = 0 if labels is None else int(labels.max()) + 1
    jobs = [(n, sub) for n in sizes for sub in "AB"
            if not (run.path / f"n{n}" / sub / "model.json").exists()]
    eta = Eta(len(jobs), run.log, at_once=workers)
    threads = torch.get_num_threads() // workers
    # spawned, not forked: OpenMP's thread pool of this process does not survive a fork
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {}
        for n, sub in jobs:
            idx = _split(disjoint_split, x, n, config.seed, groups)[sub == "B"]
            futures[n, sub] = pool.submit(
                _train_worker, config, run.path, n, sub, x[idx],
                None if labels is None else labels[idx], num_classes, threads)

        def trained(n):
            for sub in "AB":
                if (n, sub) in futures:
                    futures.pop((n, sub)).result()
                    eta.finished(f"N={n} {sub}")

        run.log(f"training {len(jobs)} models, {workers} at once, {threads} thread(s) each")
        yield trained
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _train_worker(config: SweepConfig, out: Path, n: int, sub: str, data, labels,
                  num_classes: int, threads: int) -> None:
    """Model ``sub`` of size n trained and stored by a worker process of :func:`_trainers`
    with ``threads`` torch threads (the sweep that started it holds the folder's lock)."""
    torch.set_num_threads(threads)
    _model(config, RunDir(out, config, tag="sweep"), n, sub, data, progress=False,
           labels=labels, num_classes=num_classes)


def _train_config(config: SweepConfig, seed: int, num_classes: int):
    from ..training import TrainConfig

    return TrainConfig(
        steps=config.steps, batch_size=config.batch_size, lr=config.lr,
        lr_halve_every=config.lr_halve_every,
        sigma_dist=config.sigma_dist, sigma_max=config.sigma_max, ema=config.ema,
        seed=seed, device=config.device,
        label_dropout=config.label_dropout if num_classes else 0.0,
    )


def _model_options(config: SweepConfig, num_classes: int) -> dict:
    """The model's options; a class-conditional one also gets ``num_classes``."""
    return {**dict(config.model_options), **({"num_classes": num_classes} if num_classes else {})}


def sample_classes(n: int, num_classes: int) -> torch.Tensor:
    """The class of each of n samples, balanced and the same for both models: k mod K."""
    return torch.arange(n) % num_classes


def _samples(config: SweepConfig, run: RunDir, model_a, model_b, s1):
    """Both models' samples from the same seeds (and, class-conditional, the same classes:
    :func:`sample_classes`): (A, B, stored) with ``stored`` True when a previous run had
    written them."""
    from ..diffusion.sampling import sample

    n = len(s1)
    samples_path = run.path / f"n{n}" / "samples.safetensors"
    if samples_path.exists():
        from safetensors.torch import load_file

        stored = load_file(str(samples_path))
        return stored["A"], stored["B"], True
    run.log(f"N={n}: sampling {config.n_samples} images from each model")
    kw = dict(config.sampler_options)
    shape = tuple(s1.shape[1:])
    if config.condition == "classes":
        kw.update(cond=sample_classes(config.n_samples, model_a.num_classes),
                  guidance=config.guidance)
    xa, xb = (sample(m, config.n_samples, shape, method=config.sampler,
                     seed=config.sample_seed, device=config.device, **kw).cpu()
              for m in (model_a, model_b))
    return xa, xb, False


def _store_samples(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def _psnr_curves(config: SweepConfig, model_a, model_b, s1, s2) -> dict:
    """Denoising PSNR curves averaged over both models, on their own training images
    ("train") and on the other subset ("test")."""
    from .. import metrics

    sigmas = [metrics.sigma_for_psnr(p) for p in config.psnr_levels]
    k = config.n_eval
    curves = {}
    for split_name, imgs_a, imgs_b in (("train", s1[:k], s2[:k]), ("test", s2[:k], s1[:k])):
        ca = metrics.denoising_psnr_curve(model_a, imgs_a.to(config.device), sigmas)
        cb = metrics.denoising_psnr_curve(model_b, imgs_b.to(config.device), sigmas)
        curves[split_name] = {
            "sigma": ca["sigma"], "input_psnr": ca["input_psnr"],
            "output_psnr": [(a + b) / 2 for a, b in zip(ca["output_psnr"], cb["output_psnr"])],
        }
    return curves


def _run_size(config: SweepConfig, run: RunDir, s1, s2, progress, heldout=None,
              eta: Eta | None = None, labels=None) -> dict:
    """One N: train (or load) both models, sample, compare. ``labels``: (S1's, S2's class
    labels, number of classes) of a class-conditional sweep, else None."""
    from .. import metrics
    from ..analysis.information import identification_bound

    n = len(s1)
    y1, y2, k = labels if labels is not None else (None, None, 0)
    model_a = _model(config, run, n, "A", s1, progress, eta, labels=y1, num_classes=k)
    model_b = _model(config, run, n, "B", s2, progress, eta, labels=y2, num_classes=k)
    xa, xb, stored = _samples(config, run, model_a, model_b, s1)
    c = config.center
    paired = metrics.paired_cosine(xa, xb, center=c)
    near_a, nn_a = metrics.nearest_cosine(xa, s1, center=c, return_index=True)
    near_b, nn_b = metrics.nearest_cosine(xb, s2, center=c, return_index=True)
    if not stored:
        # the nearest training images and both training sets travel with the samples: the
        # report needs no dataset, and `pydiffgen audit` can audit the run from this file
        _store_samples(run.path / f"n{n}" / "samples.safetensors", {
            "A": xa, "B": xb, "nearest_A": s1[nn_a], "nearest_B": s2[nn_b],
            "S1": s1.clone(), "S2": s2.clone()})  # own storage: safetensors refuses views
    baseline = metrics.closest_pairs_cosine(s1[: config.n_baseline], s2, center=c)
    if n >= 2:
        mem_a, mem_b = metrics.memorization(xa, s1), metrics.memorization(xb, s2)
        mem = {"fraction": (mem_a.fraction + mem_b.fraction) / 2,
               "ratio": mem_a.ratio.tolist() + mem_b.ratio.tolist()}
        memorized = torch.stack([mem_a.memorized, mem_b.memorized])  # [2, M]
    else:  # the nearest/second-nearest ratio needs two training images
        mem = {"fraction": None, "ratio": []}
        memorized = None
    # Yi, Sun & Li (2023): I(sample; training set) ≥ log 2 − CE of identifying, from
    # nearest-neighbour distances, which of the two disjoint sets a sample came from
    ident = identification_bound([xa, xb], [s1, s2], folds=_FOLDS, seed=config.seed)
    curves = _psnr_curves(config, model_a, model_b, s1, s2)
    gap = [tr - te for tr, te in zip(curves["train"]["output_psnr"],
                                      curves["test"]["output_psnr"])]
    gaussian = gaussian_rmse(model_a, s1, s2[: config.n_eval], config.device)
    jac = None
    if heldout is not None:  # Kadkhodaie et al. §3: spectra and adaptive bases of both models
        from .jacobian_spectra import sweep_jacobian

        jac = sweep_jacobian(model_a, model_b, heldout.to(config.device),
                             config.jacobian_sigmas, seed=config.seed)
    return {
        "gaussian": gaussian,
        "jacobian": jac,
        "n": n,
        "paired": paired.tolist(),
        "nearest": near_a.tolist() + near_b.tolist(),
        "nearest_index_A": nn_a.tolist(),
        "nearest_index_B": nn_b.tolist(),
        "baseline": baseline.tolist(),
        "memorization": mem,
        "psnr": curves,
        "psnr_gap_db": sum(gap) / len(gap),
        "identification_bits": max(0.0, ident.bound_bits),
        "identification_accuracy": ident.accuracy,
        "generalization_score": (metrics.generalization_score(xa, s1)
                                 + metrics.generalization_score(xb, s2)) / 2,
        **({"per_class": per_class(paired, memorized,
                                   sample_classes(len(xa), model_a.num_classes))}
           if labels is not None else {}),
    }


def per_class(paired: torch.Tensor, memorized: torch.Tensor | None,
              classes: torch.Tensor) -> dict:
    """Per class of the samples (``classes`` [M]): how many, the two models' paired median
    cosine and the memorized fraction of both models' samples of that class (``memorized``
    [2, M] bool, None when N < 2), {class: {...}}."""
    out = {}
    for k in classes.unique().tolist():
        sel = classes == k
        out[str(k)] = {"samples": int(sel.sum()),
                       "paired_median": float(paired[sel].median()),
                       "memorized": None if memorized is None else
                       float(memorized[:, sel].double().mean())}
    return out


def gaussian_rmse(model, train, held, device, max_dim: int = 4096):
    """RMSE between ``model`` and the Gaussian denoiser D_G of its training set across 12
    log-spaced σ in [0.002, 80] on held-out images (Li, Dai & Qu 2024); None when
    d > ``max_dim`` (the d×d eigendecomposition would dominate the sweep)."""
    if train[0].numel() > max_dim:
        return None
    from ..analysis import GaussianDenoiser, denoiser_distance

    sigmas = [0.002 * (80 / 0.002) ** (i / 11) for i in range(12)]
    G = GaussianDenoiser.fit(train).to(device)
    dist = denoiser_distance(model, G, held.to(device), sigmas)
    return {"sigma": sigmas, "rmse": dist["rmse"]}


def _median(values):
    return float(torch.tensor(values, dtype=torch.float64).median()) if values else None


def verdict(summary: dict) -> str:
    """memorizing / transition / generalizing from the per-N medians (see README).

    Memorizing: samples are copies (median nearest-training cosine ≥ 0.95 and at least
    90% memorized by the distance ratio). Generalizing: the two models agree (paired
    median ≥ 0.9) more than either agrees with its training set.
    """
    mem = summary["memorized_fraction"]
    if summary["nearest_median"] >= 0.95 and (mem is None or mem >= 0.9):
        return "memorizing"
    if summary["paired_median"] >= 0.9 and summary["paired_median"] > summary["nearest_median"]:
        return "generalizing"
    return "transition"


def lead_over_controls(paired, nearest, baseline, *, ci: float = 0.95, n_boot: int = 1000,
                       seed: int = 0) -> dict:
    """The evidence of generalization at one N: how far the two models' samples agree
    beyond both controls, lead = median(paired) − max(median(nearest), median(baseline)),
    with its half-sampling interval (:func:`pydiffgen.metrics.bootstrap.confidence_interval`,
    the one method of every interval here), and the share of samples whose paired cosine
    exceeds their own nearest-training cosine.

    paired [M] (A_i vs B_i), nearest [2M] (A's samples, then B's), baseline [K] (S1 images
    vs their closest S2 image). A resample redraws seeds i (the pair and both its nearest
    cosines together, as they share their noise) and, independently, baseline images.
    Returns {"lead", "low", "high", "ci", "paired_above_nearest"}.
    """
    import numpy as np

    from ..metrics.bootstrap import confidence_interval

    paired = np.asarray(paired, dtype=np.float64)
    m = len(paired)
    nearest = np.asarray(nearest, dtype=np.float64).reshape(2, m)
    per_seed = np.stack([paired, nearest[0], nearest[1]], axis=1)  # [M, 3]

    def lead(seeds, base):
        return float(np.median(seeds[:, 0]) - max(np.median(seeds[:, 1:]), np.median(base)))

    est = confidence_interval(lead, per_seed, np.asarray(baseline, dtype=np.float64), ci=ci,
                              n_boot=n_boot, seed=seed)
    return {"lead": est.value, "low": est.low, "high": est.high, "ci": ci,
            "paired_above_nearest": float((paired[None] > nearest).mean())}


def _summary(r: dict) -> dict:
    s = {
        "paired_median": _median(r["paired"]),
        "nearest_median": _median(r["nearest"]),
        "baseline_median": _median(r["baseline"]),
        "lead": lead_over_controls(r["paired"], r["nearest"], r["baseline"]),
        "memorized_fraction": r["memorization"]["fraction"],
        "psnr_gap_db": r["psnr_gap_db"],
        "generalization_score": r["generalization_score"],
        "identification_bits": r.get("identification_bits"),
    }
    s["verdict"] = verdict(s)
    if r.get("per_class"):  # class-conditional pairs
        s["per_class"] = r["per_class"]
    if r.get("jacobian"):  # model A's tr J and the A–B basis agreement, per σ
        s["effective_dimension"] = r["jacobian"]["A"]["trace"]
        s["basis_agreement"] = r["jacobian"]["agreement"]
    return s


def summary_table(metrics: dict) -> list[str]:
    """The sweep's results as a terminal table, one row per N (printed after a run)."""
    rows = [("N", "verdict", "A vs B", "nearest train", "S1-S2", "lead [95% CI]",
             "A vs B > nearest", "memorized")]
    for n, s in sorted(metrics["sizes"].items(), key=lambda item: int(item[0])):
        mem, lead = s["memorized_fraction"], s["lead"]
        rows.append((n, s["verdict"], f"{s['paired_median']:.3f}", f"{s['nearest_median']:.3f}",
                     f"{s['baseline_median']:.3f}",
                     f"{lead['lead']:+.3f} [{lead['low']:+.3f}, {lead['high']:+.3f}]",
                     f"{100 * lead['paired_above_nearest']:.0f}%",
                     "n/a" if mem is None else f"{100 * mem:.0f}%"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) if i != 1 else str(c).ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    took = f" in {duration(metrics['seconds'])}" if metrics.get("seconds") else ""
    return [f"sweep finished{took}; median cosines (A vs B: the two models' samples from one "
            "seed; nearest train: each sample vs its closest training image; S1-S2: each S1 "
            "image vs its closest S2 image; lead: A vs B minus the larger of the two controls, "
            "95% half-sampling CI; A vs B > nearest: the samples whose A vs B cosine exceeds their "
            "nearest-training one)", *lines]


EXPERIMENT = Experiment(
    name="sweep", help="train pairs of models on disjoint subsets, compare",
    config=SweepConfig, presets=PRESETS, run=generalization_sweep, report=write_report,
    plan=plan, summary=summary_table)
