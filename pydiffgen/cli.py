"""pydiffgen: does a diffusion model memorize its training images or generalize?

Train denoisers, sample them, and measure where models stop copying their training set
(Kadkhodaie et al. 2024): the demo sweep, audits of any model's samples, Jacobian spectra,
the Gaussian structure and memorization probes, each written as a self-contained HTML
report. Errors print one line and exit with status 1 (2 for a wrong command line)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from . import config as cfgmod
from .errors import CheckpointError, InputError, PydiffgenError

if TYPE_CHECKING:
    from .experiments import Experiment


def cmd_demo(args) -> int:
    """The sweep's "demo" preset (what ``make demo`` runs)."""
    sweep = _experiment("sweep")
    config = sweep.preset("demo")
    if args.dry_run:
        print(sweep.plan(config))
        return 0
    return _run_experiment(sweep, config, args.out, resume=True, progress=not args.quiet)


def cmd_experiment(exp: Experiment, args) -> int:
    """A preset-based experiment: rebuild a finished run's report (--report-only), print
    the plan (--dry-run), or run it with --preset and the config's flags."""
    if args.report_only:
        return _report_only(exp, args.report_only)
    config = cfgmod.from_arguments(exp.config, args, exp.preset(args.preset) if args.preset
                                   else None)
    _check_device(getattr(config, "device", "cpu"))
    if args.dry_run:
        print(exp.plan(config))
        return 0
    return _run_experiment(exp, config, args.out, resume=args.resume, progress=not args.quiet)


def _run_experiment(exp: Experiment, config, out, *, resume: bool, progress: bool) -> int:
    out = Path(out) if out else Path("runs") / config.name
    results = exp.run(config, out, resume=resume, progress=progress)
    if _is_main():  # under torchrun every rank runs a sweep; rank 0 speaks
        for line in exp.summary(results) if exp.summary else ():
            print(line)
        print(f"report: {out / 'report.html'}")
    return 0


def _report_only(exp: Experiment, run) -> int:
    if not Path(run).exists():
        raise InputError(f"{run} does not exist")
    if not Path(run).is_dir():
        raise InputError(f"{run} is a file, not a run folder")
    try:
        exp.report(run)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        if isinstance(err, PydiffgenError):
            raise
        # the stored results are files anyone can edit: a wrong one is an error, not a crash
        raise CheckpointError(f"{run} holds a result file that is not what this experiment "
                              f"writes ({type(err).__name__}: {err}); rerun it with the same "
                              "config") from None
    print(f"report: {Path(run) / 'report.html'}")
    return 0


def cmd_train(args) -> int:
    from . import data, models, training

    x, info = data.load(args.data, return_info=True, **cfgmod.parse_options(args.data_option))
    config = cfgmod.from_arguments(training.TrainConfig, args, _train_defaults())
    model_options = cfgmod.parse_options(args.model_option)
    import torch

    torch.manual_seed(config.seed)  # the initial weights too are a function of --seed
    model = models.build(args.model, channels=x.shape[1], data_shape=tuple(x.shape[1:]),
                         **model_options)
    with _hold(args.out, "training run"):
        # a class-conditional model (--model-option num_classes=K) takes the dataset's labels
        result = training.train(model, (x, info), config, out_dir=args.out, resume=args.resume,
                                progress=not args.quiet, distributed=_world() > 1,
                                dataset={"name": args.data, "options": info["options"]})
    if _world() > 1 and not _is_main():
        return 0
    print(f"model: {Path(args.out) / 'model.safetensors'} (final loss {result.losses[-1]:.4g})")
    return 0


# what ``sample --out`` writes, by suffix
_SAMPLE_FORMATS = (".npy", ".npz", ".safetensors", ".png")


def cmd_sample(args) -> int:
    from .checkpoint import load_model
    from .diffusion.sampling import check_method, sample
    from .experiments.audit import default_method

    out = Path(args.out)
    if out.suffix not in _SAMPLE_FORMATS:
        raise InputError(f"--out {out}: name a {', '.join(_SAMPLE_FORMATS)} file")
    options = cfgmod.parse_options(args.sampler_option)
    if args.method:
        check_method(args.method, options)
    shape = _shape(args.shape) if args.shape else None
    model = load_model(args.model).eval()
    method = args.method or default_method(model)
    check_method(method, options)
    if shape is None:
        shape = tuple(getattr(model, "meta", {}).get("data_shape") or ())
        if not shape:
            raise InputError("the checkpoint does not record the image shape; pass --shape C,H,W")
    # the lock is a sibling of the file: two commands never write one --out
    with _hold(out.parent, "sample command", lock_name=f".{out.name}.lock"):
        x = sample(model, args.n, shape, method=method, seed=args.seed,
                   device=args.device, progress=not args.quiet, **options).cpu()
        _write_samples(out, x)
    print(f"samples: {out} {tuple(x.shape)}")
    return 0


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise InputError(f"--shape must be positive integers C,H,W, got {text!r}")
    return shape


def _write_samples(out: Path, x) -> None:
    """``x`` [n, C, H, W] into ``out`` in the format its suffix names (array key "samples")."""
    import numpy as np

    from .io import atomic_path

    if out.suffix == ".png":
        from .report import figures

        fig = figures.image_grid([("", x[i : i + 8].numpy()) for i in range(0, len(x), 8)])
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        return
    with atomic_path(out) as tmp:
        if out.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({"samples": x.contiguous()}, str(tmp))
            return
        with open(tmp, "wb") as f:
            if out.suffix == ".npz":
                np.savez(f, samples=x.numpy())
            else:
                np.save(f, x.numpy())


def cmd_memorization_gap(args) -> int:
    """Gap vs σ and trajectory probe of a trained checkpoint."""
    from .experiments.memorization_probes import checkpoint_gap

    res = checkpoint_gap(args.model, args.data, n_train=args.n_train,
                         data_options=cfgmod.parse_options(args.data_option),
                         n_heldout=args.n_heldout, n_samples=args.n_samples, out_dir=args.out)
    peak_sigma, peak = res["gap"].peak()
    print(f"peak gap {peak:.3g} at sigma {peak_sigma:.3g}; report: {res['report']}")
    return 0


def cmd_memorization_toy2d(args) -> int:
    """The 2-D circle toy: a trained MLP vs the exact and the blurred optimum."""
    from .analysis.toy2d import Toy2DConfig
    from .experiments.memorization_probes import toy2d

    toy = toy2d(Toy2DConfig(steps=args.steps, delta=args.delta, n_points=args.n_points),
                args.out, progress=not args.quiet)
    for name, d in toy["denoisers"].items():
        g = d["gap"]
        print(f"{name:8s} peak G {g['peak_gap']:.3g} at sigma {g['peak_sigma']:.3g}; "
              f"memorized {d['memorized_fraction']:.2f}; nearer held-out "
              f"{d['nearer_heldout_fraction']:.2f}")
    print(f"fitted delta {toy['fit_delta']['delta']}; report: {toy['report']}")
    return 0


def cmd_jacobian(args) -> int:
    """Jacobian spectra of a trained denoiser at a few images and noise levels."""
    from .errors import InputError
    from .experiments.jacobian_spectra import run_jacobian

    try:
        sigmas = [float(s) for s in args.sigmas.split(",")]
    except ValueError:
        raise InputError(f"--sigmas must be a comma list of numbers, got {args.sigmas!r}") from None
    res = run_jacobian(args.model, args.data, data_options=cfgmod.parse_options(args.data_option),
                       n=args.n, sigmas=sigmas, k=args.k, show=args.show, seed=args.seed,
                       out_dir=args.out, device=args.device)
    for r in res["per_sigma"]:
        tr = sum(r["trace"]) / len(r["trace"])
        lam1 = sum(e[0] for e in r["eigenvalues"]) / len(r["eigenvalues"])
        print(f"sigma {r['sigma']:g}: tr J {tr:.3g}, top eigenvalue {lam1:.3g}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_audit(args) -> int:
    """Memorization audit of samples (files, or drawn from --model) against a training set."""
    from .experiments import audit as au

    if (args.samples is None) == (args.model is None):
        raise InputError("pass exactly one of --samples FILE and --model DIR")
    if args.prompts or args.classes:
        return _condition_audit(args)
    if args.train is None:
        raise InputError("--train FILE is required (the training set to search)")
    config = cfgmod.from_arguments(au.AuditConfig, args)
    out = Path(args.out)
    train, train_info = au.load_images(args.train)
    if args.model:
        model = au.load_denoiser(args.model, device=args.device)
    else:
        samples, samples_info = au.load_images(args.samples)
    features = au.load_features(args.features) if args.features else None
    # the lock is held on rank 0, which alone writes the folder
    with _hold(out, "audit") if _is_main() else contextlib.nullcontext():
        return _audit(args, config, train, train_info, model if args.model else None,
                      None if args.model else (samples, samples_info), features)


def _condition_audit(args) -> int:
    """``audit --model DIR --prompts FILE | --classes LIST``: memorization detectors per
    condition, ranked (experiments.detection)."""
    from .experiments import audit as au
    from .experiments import detection

    if args.model is None:
        raise InputError("--prompts / --classes need --model DIR (a conditional model)")
    if args.prompts and args.classes:
        raise InputError("pass one of --prompts FILE and --classes LIST, not both")
    model = au.load_denoiser(args.model, device=args.device)
    prompts = classes = None
    if args.prompts:
        prompts = [s.strip() for s in _read_text(args.prompts, "--prompts").splitlines()
                   if s.strip()]
    else:
        classes = _int_list(args.classes, "--classes")
    cond, names = detection.conditions(model, prompts=prompts, classes=classes)
    labels = detection.read_labels(args.labels, len(names)) if args.labels else None
    train = au.load_images(args.train)[0] if args.train else None
    encoder = None
    if args.encoder:
        from .features import load_encoder

        encoder = load_encoder(args.encoder, device=args.device,
                               trust_code=args.trust_torchscript).encode
    out = Path(args.out)
    with _hold(out, "audit"):
        result = detection.condition_audit(
            model, cond, names, train=train, guidance=args.guidance, encoder=encoder,
            labels=labels, n=args.n, seed=args.seed, wen_sigma_max=args.wen_sigma_max,
            device=args.device,
            **cfgmod.parse_options(args.sampler_option))
        report = detection.write_detect_report(result, train, out)
    for i, name in enumerate(result["ranking"]["wen"], 1):
        row = next(r for r in result["conditions"] if r["condition"] == name)
        copies = f"; copies {row['copies']}/{args.n}" if "copies" in row else ""
        print(f"{i:3d}. {name}: Wen score {row['wen_score']:.4g}{copies}")
    if "auc" in result:
        print("AUC: " + ", ".join(f"{k} {v:.3f}" for k, v in result["auc"].items()))
    print(f"detect.json: {out / 'detect.json'}; report: {report}")
    return 0


def _read_text(path, flag: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{flag} {path}: cannot read it ({err})") from None


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{flag} must be comma-separated integers, got {text!r}") from None


def _audit(args, config, train, train_info, model, samples, features) -> int:
    """cmd_audit once its inputs are read and its folder is held."""
    from .experiments import audit as au

    out = Path(args.out)
    sources = {"train": train_info}
    if model is not None:
        shape = tuple(getattr(model, "meta", {}).get("data_shape") or train.shape[1:])
        if not _is_main():  # under torchrun rank 0 samples, the other ranks read its cache
            _barrier()
        samples = au.sample_model(model, args.n, shape, method=args.method, seed=args.seed,
                                  device=args.device, progress=not args.quiet, cache=out,
                                  **cfgmod.parse_options(args.sampler_option))
        if _is_main():
            _barrier()
        sources["samples"] = {"model": args.model, "n": args.n, "seed": args.seed,
                              "method": args.method or au.default_method(model)}
    else:
        samples, sources["samples"] = samples
    if features is not None:
        sources["features"] = {"path": args.features}
    device = args.device  # the searches run there too
    if features is not None:
        features = {k: v.to(device) for k, v in features.items()}
    encoder = None
    if args.encoder:
        from .features import load_encoder

        encoder = load_encoder(args.encoder, device=device, trust_code=args.trust_torchscript)
    result = au.audit(samples.to(device), train.to(device), features=features, config=config,
                      sources=sources, encoder=encoder, progress=not args.quiet and _is_main())
    if not _is_main():  # under torchrun every rank searched its shard; rank 0 reports
        return 0
    report = au.write_audit_report(result, out)
    px = result.spaces["pixel"].memorization
    print(f"memorized {int(px.memorized.sum())}/{len(px.ratio)} ({px.fraction:.1%}); "
          f"duplicates in train {len(result.duplicates.dropped)}; report: {report}")
    return 0


def cmd_metrics(args) -> int:
    """Feature-space metrics of --fake against --real (and --train / --test), with CIs."""
    from .experiments import feature_metrics as fm

    metrics = fm.parse_metrics(args.metrics)  # a wrong name fails before any work
    out = Path(args.out)
    with _hold(out, "metrics run"):
        result = fm.feature_metrics(
            args.real, args.fake, train=args.train, test=args.test, encoder=args.encoder,
            metrics=metrics, k=args.k, n_boot=args.n_boot, seed=args.seed,
            batch_size=args.batch_size, trust_code=args.trust_torchscript,
            device=args.device, cache=out / "features", progress=not args.quiet)
        report = fm.write_metrics(result, out)
    print(fm.format_table(result))
    print(f"metrics: {out / 'metrics.json'}; report: {report}")
    return 0


def cmd_reproduce(args) -> int:
    """Run one claim (or all) of the papers and print paper beside ours; --list shows the
    table of claims with the last stored results."""
    from .experiments import reproduce as rp

    if args.list or args.claim is None:
        for r in rp.claim_rows(args.out, args.scale):
            print(f"{r['claim']:10s}  {r['paper']}: {r['paper_value']}\n"
                  f"{'':10s}  ours ({r['scale']}): {r['ours'] or '—'}  [{r['verdict']}]")
        return 0
    names = [c.name for c in rp.CLAIMS] if args.claim == "all" else [rp.claim(args.claim).name]
    with _hold(Path(args.out), "reproduction"):
        for name in names:
            row = rp.reproduce(name, scale=args.scale, out=args.out, progress=not args.quiet)
            print(f"{name}: paper {row['paper_value']}; ours {row['ours']} [{row['verdict']}]")
        report = rp.write_report(args.out, args.scale)
    print(f"report: {report}")
    return 0


def cmd_backends(args) -> int:
    from . import available_backends

    print(json.dumps(available_backends(), indent=2))
    return 0


def cmd_datasets(args) -> int:
    from .data import DATASETS

    width = max(map(len, DATASETS))
    for name, text in DATASETS.items():
        print(f"{name:{width}s}  {text}")
    return 0


class UsageError(PydiffgenError):
    """Wrong command-line syntax (argparse's complaint), exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose complaints are one line, like every other error of the command."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; "(default: …)" after every option that has one (a
    config flag states its own default, its parser default None means "unset")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "(default" in text:
            return text
        return super()._get_help_string(action)


def _global_flags(top: bool, threads: bool = True) -> argparse.ArgumentParser:
    """--quiet and --threads, accepted before or after the subcommand (:func:`_merge_global`
    joins the two). A subcommand's values would overwrite the top level's of the same
    name, so the top level keeps its own (``quiet_before``, ``threads_before``).
    ``threads`` False: the subcommand's config has its own ``threads`` field."""
    from .report.provenance import usable_cores

    g = argparse.ArgumentParser(add_help=False)
    where = {"default": None} if top else {"default": argparse.SUPPRESS}
    g.add_argument("--quiet", action="store_true", help="no progress bars",
                   **({"dest": "quiet_before", "default": False} if top else where))
    if threads:
        g.add_argument("--threads", type=_positive_int, metavar="N",
                       help="CPU threads for torch (default: the cores this process may use, "
                       f"{usable_cores()} here)",
                       **({"dest": "threads_before"} if top else {}), **where)
    return g


def _merge_global(args: argparse.Namespace) -> argparse.Namespace:
    """One ``quiet`` and one ``threads`` from the flags given before or after the
    subcommand (after wins)."""
    args.quiet = getattr(args, "quiet", False) or args.quiet_before
    if getattr(args, "threads", None) is None:
        args.threads = args.threads_before
    return args


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .experiments.registry import EXPERIMENTS
    from .report.provenance import version_text

    p = _Parser(prog="pydiffgen", description=__doc__, formatter_class=_Help,
                parents=[_global_flags(top=True)])
    p.add_argument("--version", action="version", version=version_text())
    sub = _Subcommands(p.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    s = sub.add("demo", "the memorization→generalization sweep on built-in data (the "
                "sweep's demo preset)")
    s.add_argument("--out", default="runs/demo", help="output folder")
    s.add_argument("--dry-run", action="store_true",
                   help="check the data and print the plan with an estimated time, then exit")
    s.set_defaults(func=cmd_demo)
    s = sub.add("report", "rebuild report.html of a finished sweep")
    s.add_argument("run", help="the sweep's output folder")
    s.set_defaults(func=lambda args: _report_only(_experiment("sweep"), args.run))
    _add_train(sub)
    _add_sample(sub)
    groups = {"memorization": _add_memorization(sub)}
    for exp in EXPERIMENTS:  # "memorization factors": action "factors" of "memorization"
        *group, name = exp.name.split()
        _add_experiment(groups[group[0]] if group else sub, name, exp)
    _add_jacobian(sub)
    _add_audit(sub)
    _add_metrics(sub)
    _add_reproduce(sub)
    s = sub.add("backends", "what was built and which backends can run")
    s.set_defaults(func=cmd_backends)
    s = sub.add("datasets", "list dataset names")
    s.set_defaults(func=cmd_datasets)
    return p


class _Subcommands:
    """Adds subcommands that share the help format and the global flags."""

    def __init__(self, subparsers):
        self.subparsers = subparsers

    def add(self, name: str, help: str, threads: bool = True) -> argparse.ArgumentParser:
        return self.subparsers.add_parser(name, help=help, description=help,
                                          formatter_class=_Help,
                                          parents=[_global_flags(False, threads)])


def _add_experiment(sub: _Subcommands, name: str, exp: Experiment) -> None:
    """A preset-based experiment's subcommand: one flag per config field, and the flags
    every such experiment shares."""
    own_threads = "threads" in {f.name for f in dataclasses.fields(exp.config)}
    s = sub.add(name, exp.help, threads=not own_threads)
    s.add_argument("--preset", help=f"start from a preset: {', '.join(exp.presets)} "
                   "(the flags below then change it)")
    s.add_argument("--out", help="output folder (default: runs/<name>)")
    s.add_argument("--dry-run", action="store_true",
                   help="check the config and the data, print the plan and exit")
    s.add_argument("--report-only", metavar="RUN", help="rebuild report.html of a finished run")
    s.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse what a previous run of the same config stored")
    cfgmod.add_arguments(s, exp.config)
    s.set_defaults(func=lambda args: cmd_experiment(exp, args))


_KEY_VALUE = "KEY=VALUE, repeatable; values parse as JSON when they can"


def _train_defaults():
    """What ``pydiffgen train`` trains when a flag is not given."""
    from .training import TrainConfig

    return TrainConfig(steps=2000, batch_size=64)


def _add_train(sub: _Subcommands) -> None:
    from .training import TrainConfig

    s = sub.add("train", "train one denoiser")
    s.add_argument("--data", required=True, help="dataset name (pydiffgen datasets)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help=f"dataset option, e.g. n=32 ({_KEY_VALUE})")
    s.add_argument("--model", default="bf_unet", help="bf_unet | bf_cnn | unet | mlp")
    s.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help=f"model option, e.g. width=32 ({_KEY_VALUE})")
    s.add_argument("--out", required=True, help="checkpoint folder")
    s.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue the training checkpoint in --out")
    cfgmod.add_arguments(s, TrainConfig, _train_defaults())
    s.set_defaults(func=cmd_train)


_METHODS_HELP = ("kadkhodaie | euler | heun | ddpm (default: the model's own kind: "
                 "kadkhodaie for a blind model, heun for a σ-conditioned one)")


def _add_sample(sub: _Subcommands) -> None:
    s = sub.add("sample", "sample from a trained denoiser")
    s.add_argument("--model", required=True, help="checkpoint folder or model.safetensors")
    s.add_argument("--n", type=int, default=64, help="number of samples")
    s.add_argument("--shape", help="C,H,W (default: from the checkpoint)")
    s.add_argument("--method", help=_METHODS_HELP)
    s.add_argument("--sampler-option", action="append", metavar="KEY=VALUE",
                   help=f"sampler option, e.g. steps=40 ({_KEY_VALUE})")
    s.add_argument("--seed", type=int, default=0, help="seed of the initial and injected noise")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    s.add_argument("--out", required=True, help="a .npy, .npz or .safetensors array "
                   "(key 'samples') or a .png grid")
    s.set_defaults(func=cmd_sample)


def _add_memorization(sub: _Subcommands) -> _Subcommands:
    """``pydiffgen memorization`` and its actions gap, toy2d and report; returns its
    subparsers, where the factor sweep's experiment adds ``factors``."""
    s = sub.add("memorization", "where models memorize: noise-level gap, trajectory probe, "
                "2-D toy, factor sweeps")
    acts = _Subcommands(s.add_subparsers(dest="action", required=True, metavar="ACTION"))
    a = acts.add("gap", "gap vs sigma and trajectory probe of a trained model")
    a.add_argument("--model", required=True, help="checkpoint folder")
    a.add_argument("--data", required=True, help="the dataset the model was trained on")
    a.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help=f"dataset option ({_KEY_VALUE})")
    a.add_argument("--n-train", type=int, required=True, help="trained on the first N images")
    a.add_argument("--n-heldout", type=int, default=64, help="held-out: the last images")
    a.add_argument("--n-samples", type=int, default=64, help="samples for the probe")
    a.add_argument("--out", required=True, help="output folder")
    a.set_defaults(func=cmd_memorization_gap)
    a = acts.add("toy2d", "the 2-D circle toy: MLP vs exact vs blurred optimum")
    a.add_argument("--steps", type=int, default=1500, help="training steps of the MLP")
    a.add_argument("--delta", type=float, default=0.1, help="blur of the smoothed optimum")
    a.add_argument("--n-points", type=int, default=32, help="training points on the circle")
    a.add_argument("--out", default="runs/toy2d", help="output folder")
    a.set_defaults(func=cmd_memorization_toy2d)
    a = acts.add("report", "rebuild report.html of a finished factor sweep")
    a.add_argument("run", help="the sweep's output folder")
    a.set_defaults(func=lambda args: _report_only(_experiment("memorization factors"),
                                                  args.run))
    return acts


def _add_jacobian(sub: _Subcommands) -> None:
    s = sub.add("jacobian", "Jacobian eigenvalues, adaptive basis and effective dimension of "
                "a trained denoiser")
    s.add_argument("--model", required=True, help="checkpoint folder or model.safetensors")
    s.add_argument("--data", required=True, help="dataset of the clean images (pydiffgen datasets)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help=f"dataset option ({_KEY_VALUE})")
    s.add_argument("--n", type=int, default=4, help="images (a seeded random choice)")
    s.add_argument("--sigmas", default="0.05,0.2,0.8", help="noise levels, comma list")
    s.add_argument("--k", type=int, default=None, help="eigenpairs per Jacobian (default: all)")
    s.add_argument("--show", type=int, default=8, help="eigenvectors shown per image")
    s.add_argument("--seed", type=int, default=0, help="seed of the image choice and the noise")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    s.add_argument("--out", default="runs/jacobian", help="output folder")
    s.set_defaults(func=cmd_jacobian)


_IMAGES_HELP = ("a .npy array [N, C, H, W] or [N, H, W], an .npz or .safetensors file (its "
                "only array, or FILE:KEY for the array KEY), or a folder of images (.png, "
                ".jpg, ...)")


_ENCODER_HELP = ("pixel | pixel:pool=P | inception:FILE | dinov2:DIR | clip:DIR | "
                 "torchscript:FILE (local weights only)")


def _add_audit(sub: _Subcommands) -> None:
    from .experiments.audit import AuditConfig

    s = sub.add("audit", "memorization audit: are samples copies of training images")
    s.add_argument("--samples", metavar="FILE[:KEY]", help=f"the samples: {_IMAGES_HELP}")
    s.add_argument("--train", metavar="FILE[:KEY]",
                   help="the training set, in the same formats (optional with --prompts / "
                   "--classes: Wen et al.'s detector needs none)")
    s.add_argument("--features", metavar="FILE.npz",
                   help=".npz with embeddings 'samples' [M, D] and 'train' [N, D]")
    s.add_argument("--encoder", help=f"add the field's feature-space metrics on this "
                   f"encoder's features: {_ENCODER_HELP}")
    s.add_argument("--trust-torchscript", action="store_true",
                   help="allow a torchscript: encoder (its archive holds code it runs)")
    s.add_argument("--model", help="instead of --samples: a pydiffgen checkpoint or a "
                   "diffusers UNet2DModel folder to sample from")
    s.add_argument("--prompts", metavar="FILE", help="with a text-conditional --model: "
                   "one prompt per line; ranks them by memorization detectors (detect.json)")
    s.add_argument("--classes", metavar="LIST", help="with a class-conditional --model: "
                   "class indices, e.g. 0,1,2; ranks them like --prompts")
    s.add_argument("--guidance", type=float, help="classifier-free guidance weight w of the "
                   "conditional samples (default: none, the conditional model)")
    s.add_argument("--labels", metavar="FILE", help="with --prompts / --classes: one 0/1 per "
                   "condition (1: known memorized) for the detectors' ROC AUC")
    s.add_argument("--wen-sigma-max", type=float, metavar="SIGMA", help="with --prompts / "
                   "--classes: the noise level Wen et al.'s path starts from (default: the "
                   "model's sigma_max, else 80)")
    s.add_argument("--n", type=int, default=64, help="samples to draw from --model "
                   "(per condition with --prompts / --classes)")
    s.add_argument("--seed", type=int, default=0, help="seed of the samples drawn from --model")
    s.add_argument("--method", help=_METHODS_HELP)
    s.add_argument("--sampler-option", action="append", metavar="KEY=VALUE",
                   help=f"sampler option ({_KEY_VALUE})")
    s.add_argument("--device", default="cpu", help="where sampling and the searches run")
    s.add_argument("--out", default="runs/audit", help="output folder")
    cfgmod.add_arguments(s, AuditConfig)
    s.set_defaults(func=cmd_audit)


def _add_reproduce(sub: _Subcommands) -> None:
    from .experiments.reproduce import CLAIMS

    s = sub.add("reproduce", "reproduce a claim of the papers: the paper's number beside ours")
    s.add_argument("claim", nargs="?", help=f"all, or one of {', '.join(c.name for c in CLAIMS)}"
                   " (none: the list)")
    s.add_argument("--list", action="store_true", help="list the claims and stored results")
    s.add_argument("--scale", default="cpu", choices=("cpu", "paper"),
                   help="cpu: presets for a 2-core CPU; paper: the papers' settings (a GPU)")
    s.add_argument("--out", default="runs/reproduce", help="output folder")
    s.set_defaults(func=cmd_reproduce)


def _add_metrics(sub: _Subcommands) -> None:
    from .experiments.feature_metrics import METRICS

    s = sub.add("metrics", "feature-space metrics (PRDC, FD, KID, AuthPct, C_T, FLD, "
                "extraction, copy score) with confidence intervals")
    s.add_argument("--real", required=True, metavar="FILE[:KEY]",
                   help=f"the real images: {_IMAGES_HELP}")
    s.add_argument("--fake", required=True, metavar="FILE[:KEY]",
                   help="the generated images, in the same formats")
    s.add_argument("--train", metavar="FILE[:KEY]",
                   help="the generator's training images (AuthPct, C_T, FLD, extraction, copy)")
    s.add_argument("--test", metavar="FILE[:KEY]",
                   help="images held out from training (C_T, FLD)")
    s.add_argument("--encoder", default="pixel", help=_ENCODER_HELP)
    s.add_argument("--trust-torchscript", action="store_true",
                   help="allow a torchscript: encoder (its archive holds code it runs)")
    s.add_argument("--metrics", default="all", help=f"all, or a comma list of "
                   f"{', '.join(METRICS)}")
    s.add_argument("--k", type=_positive_int, default=5, help="PRDC's nearest neighbours")
    s.add_argument("--n-boot", type=_positive_int, default=200,
                   help="half-sample replicates of each confidence interval")
    s.add_argument("--seed", type=int, default=0, help="seed of the intervals and of KID, C_T")
    s.add_argument("--batch-size", type=_positive_int, default=64,
                   help="images per encoder call")
    s.add_argument("--device", default="cpu", help="where the encoder runs")
    s.add_argument("--out", default="runs/metrics", help="output folder (features/ cache, "
                   "metrics.json, report.html)")
    s.set_defaults(func=cmd_metrics)


def _experiment(name: str) -> Experiment:
    from .experiments.registry import experiment

    return experiment(name)


# commands that share their work among torchrun's ranks; the others run on rank 0 only
_DISTRIBUTED_COMMANDS = ("train", "sweep", "demo", "audit")


def _hold(folder, what: str, lock_name: str = ".lock"):
    """The output folder, checked writable and locked for this command (see
    :func:`pydiffgen.experiments.hold_folder`)."""
    from .experiments import hold_folder

    return hold_folder(folder, what, lock_name)


def _check_device(name) -> None:
    """Refuse a device that does not exist here before any work."""
    if name is None or name == "cpu":
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise InputError(f"--device {name!r} is not a device ({err})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available here "
                         "(torch.cuda.is_available() is False); use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {name}: there are {torch.cuda.device_count()} cuda devices")


def _world() -> int:
    from . import distributed

    return distributed.world_size()


def _is_main() -> bool:
    from . import distributed

    return distributed.is_main()


def _barrier() -> None:
    from . import distributed

    distributed.barrier()


def _passive_openmp() -> None:
    """OpenMP threads that spin while they wait take the CPU from the threads doing the
    work when other jobs share the machine (a training step up to 7× slower at load 3 on
    2 cores); libgomp reads the policy once, when torch first starts it, so this runs before
    torch is imported, and a policy the user set is kept."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _set_threads(n: int | None) -> None:
    """torch's intra-op threads: ``n``, or the cores this process may use."""
    import torch

    from .report.provenance import usable_cores

    torch.set_num_threads(n or usable_cores())


def main(argv=None) -> int:
    _passive_openmp()
    try:
        parser = build_parser()
        args = _merge_global(parser.parse_args(argv))
        _check_device(getattr(args, "device", None))
        _set_threads(args.threads)
        if "WORLD_SIZE" in os.environ:  # under torchrun: join the process group first
            from . import distributed

            distributed.init()
            if args.command not in _DISTRIBUTED_COMMANDS and not distributed.is_main():
                return 0  # the other commands run once, on rank 0
        return args.func(args)
    except PydiffgenError as err:
        print(f"pydiffgen: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, UsageError) else 1
    except OSError as err:  # a file or folder the command was pointed at: no traceback
        print(f"pydiffgen: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pydiffgen: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        torch = sys.modules.get("torch")
        if torch is not None and torch.distributed.is_available() and \
                torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
