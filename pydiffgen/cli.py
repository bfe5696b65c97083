"""The ``pydiffgen`` command. Errors print one line and exit with status 1."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import config as cfgmod
from .errors import PydiffgenError


def cmd_demo(args) -> int:
    from .experiments.generalization import generalization_sweep, preset

    config = preset("demo")
    out = Path(args.out) if args.out else Path("runs") / config.name
    generalization_sweep(config, out, progress=not args.quiet)
    if _is_main():
        print(f"report: {out / 'report.html'}")
    return 0


def cmd_sweep(args) -> int:
    from .experiments.generalization import (
        SweepConfig,
        generalization_sweep,
        plan,
        preset,
    )

    base = preset(args.preset) if args.preset else SweepConfig()
    config = cfgmod.from_arguments(SweepConfig, args, base)
    if args.dry_run:
        print(plan(config))
        return 0
    out = Path(args.out) if args.out else Path("runs") / config.name
    generalization_sweep(config, out, resume=args.resume, progress=not args.quiet)
    if _is_main():
        print(f"report: {out / 'report.html'}")
    return 0


def cmd_report(args) -> int:
    from .experiments.generalization import write_report

    write_report(args.run)
    print(f"report: {Path(args.run) / 'report.html'}")
    return 0


def cmd_train(args) -> int:
    from . import data, models, training

    x, info = data.load(args.data, return_info=True, **cfgmod.parse_options(args.data_option))
    defaults = training.TrainConfig(steps=2000, batch_size=64)
    config = cfgmod.from_arguments(training.TrainConfig, args, defaults)
    model_options = cfgmod.parse_options(args.model_option)
    import torch

    torch.manual_seed(config.seed)  # the initial weights too are a function of --seed
    model = models.build(args.model, channels=x.shape[1], **model_options)
    result = training.train(model, x, config, out_dir=args.out, resume=args.resume,
                            progress=not args.quiet, distributed=_world() > 1,
                            dataset={"name": args.data, "options": info["options"]})
    if _world() > 1 and not _is_main():
        return 0
    print(f"model: {Path(args.out) / 'model.safetensors'} (final loss {result.losses[-1]:.4g})")
    return 0


def cmd_sample(args) -> int:
    import numpy as np

    from .checkpoint import load_model
    from .diffusion.sampling import sample
    from .errors import InputError

    model = load_model(args.model).eval()
    if args.shape:
        shape = tuple(int(s) for s in args.shape.split(","))
    else:
        shape = tuple(getattr(model, "meta", {}).get("data_shape") or ())
        if not shape:
            raise InputError("the checkpoint does not record the image shape; pass --shape C,H,W")
    x = sample(model, args.n, shape, method=args.method, seed=args.seed, device=args.device,
               progress=not args.quiet, **cfgmod.parse_options(args.sampler_option))
    out = Path(args.out)
    if out.suffix == ".png":
        from .report import figures

        fig = figures.image_grid([("", x[i : i + 8].numpy()) for i in range(0, len(x), 8)])
        fig.savefig(out, dpi=110, bbox_inches="tight")
    else:
        from .io import atomic_path

        with atomic_path(out) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, x.numpy())
    print(f"samples: {out} {tuple(x.shape)}")
    return 0


def _preset_experiment(args, config_cls, preset, plan, write_report):
    """(config, out) of a preset-based experiment from --preset and its flags; None when
    --report-only (rebuild a finished run's report) or --dry-run (print the plan) did it."""
    if args.report_only:
        write_report(args.report_only)
        print(f"report: {Path(args.report_only) / 'report.html'}")
        return None
    config = cfgmod.from_arguments(config_cls, args, preset(args.preset) if args.preset else None)
    if args.dry_run:
        print(plan(config))
        return None
    return config, Path(args.out) if args.out else Path("runs") / config.name


def cmd_gaussian(args) -> int:
    from .experiments import gaussian_structure as gs

    todo = _preset_experiment(args, gs.GaussianConfig, gs.preset, gs.plan,
                              gs.write_gaussian_report)
    if todo is None:
        return 0
    config, out = todo
    gs.gaussian_structure(config, out, resume=args.resume, progress=not args.quiet)
    print(f"report: {out / 'report.html'}")
    return 0


def cmd_memorization(args) -> int:
    """Where models memorize: gap (+ trajectory probe) of a trained model, the 2-D toy,
    factor sweeps, or a rebuilt factor report."""
    from .experiments import memorization_factors as mf
    from .io import write_json

    if args.action == "report":
        print(f"report: {mf.write_factor_report(args.run)}")
        return 0
    if args.action == "factors":
        config = cfgmod.from_arguments(mf.FactorConfig, args,
                                       mf.preset(args.preset) if args.preset else None)
        if args.dry_run:
            for p in mf.factor_points(config):
                print(f"{p['factor']}={p['value']}: N={p['n']} width={p['width']} "
                      f"k={p['k']} steps={p['steps']} w={p['w']}")
            return 0
        out = Path(args.out) if args.out else Path("runs") / config.name
        mf.memorization_factors(config, out, resume=args.resume, progress=not args.quiet)
        print(f"report: {out / 'report.html'}")
        return 0
    from .report import memorization as rm
    from .report.html import Report

    out = Path(args.out)
    if args.action == "toy2d":
        from .analysis.toy2d import Toy2DConfig, toy2d_experiment

        toy = toy2d_experiment(Toy2DConfig(steps=args.steps, delta=args.delta,
                                           n_points=args.n_points), progress=not args.quiet)
        for name, d in toy["denoisers"].items():
            g = d["gap"]
            print(f"{name:8s} peak G {g['peak_gap']:.3g} at sigma {g['peak_sigma']:.3g}; "
                  f"memorized {d['memorized_fraction']:.2f}; nearer held-out "
                  f"{d['nearer_heldout_fraction']:.2f}")
        print(f"fitted delta {toy['fit_delta']['delta']}; report: {rm.toy2d_report(toy, out)}")
        return 0
    # gap: a checkpoint trained on the first --n-train images of --data
    from . import data
    from .analysis import noise_level_gap, trajectory_probe
    from .checkpoint import load_model

    x = data.load(args.data, **cfgmod.parse_options(args.data_option))
    model = load_model(args.model).eval()
    if getattr(model, "name", "") == "mlp":
        x = x.reshape(len(x), -1)
    train, heldout = x[: args.n_train], x[len(x) - args.n_heldout:]
    gap = noise_level_gap(model, train, heldout, n_images=min(len(train), len(heldout)))
    probe = trajectory_probe(model, train, heldout, n_samples=args.n_samples)
    write_json(out / "gap.json", {"gap": gap.to_dict(), "trajectory": probe.summary()})
    rep = Report(f"Noise-level gap: {args.model}", out)
    rep.figure(rm.gap_figure({"model": gap.to_dict()}), "gap")
    rep.figure(rm.trajectory_figure(probe.summary()), "trajectory")
    peak_sigma, peak = gap.peak()
    print(f"peak gap {peak:.3g} at sigma {peak_sigma:.3g}; report: {rep.save()}")
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


def cmd_optimal_basis(args) -> int:
    """Optimal-basis experiments on synthetic data (C^alpha, disks, ray, Gaussian)."""
    from .experiments import optimal_basis as ob

    todo = _preset_experiment(args, ob.OptimalBasisConfig, ob.preset, ob.plan,
                              ob.write_optimal_basis_report)
    if todo is None:
        return 0
    config, out = todo
    res = ob.optimal_basis(config, out, resume=args.resume, progress=not args.quiet)
    s = res["summary"]
    for r in s.get("calpha", []):
        print(f"C^alpha alpha={r['alpha']:g}: PSNR slope {r['slope']:.3f} "
              f"(optimal {r['optimal_slope']:.3f})")
    for key in ("disks", "ray"):
        for r in s.get(key, []):
            print(f"{key} sigma={r['sigma']:g}: angles "
                  f"{', '.join(f'{a:.1f}' for a in r['mean_angles_deg'])} deg (random "
                  f"{r['random_mean_angles_deg'][0]:.1f}); tr J {r['trace']:.2f}; "
                  f"MSE/sigma^2 {r['mse_over_sigma2']:.2f} (optimum ~{r['k']})")
    for r in s.get("gaussian", []):
        print(f"gaussian sigma={r['sigma']:g}: |J - W_G|/|W_G| {r['rel_error']:.3f}; "
              f"diagonality {r['diagonality']:.3f}; tr J {r['trace']:.2f} "
              f"(optimal {r['optimal_trace']:.2f})")
    print(f"report: {out / 'report.html'}")
    return 0


def cmd_audit(args) -> int:
    """Memorization audit of samples (files, or drawn from --model) against a training set."""
    from .errors import InputError
    from .experiments import audit as au

    if (args.samples is None) == (args.model is None):
        raise InputError("pass exactly one of --samples FILE and --model DIR")
    config = cfgmod.from_arguments(au.AuditConfig, args)
    out = Path(args.out)
    train, train_info = au.load_images(args.train)
    sources = {"train": train_info}
    if args.model:
        model = au.load_denoiser(args.model, device=args.device)
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
        samples, sources["samples"] = au.load_images(args.samples)
    features = None
    if args.features:
        features = au.load_features(args.features)
        sources["features"] = {"path": args.features}
    device = args.device  # the searches run there too
    if features is not None:
        features = {k: v.to(device) for k, v in features.items()}
    result = au.audit(samples.to(device), train.to(device), features=features, config=config,
                      sources=sources, progress=not args.quiet and _is_main())
    if not _is_main():  # under torchrun every rank searched its shard; rank 0 reports
        return 0
    report = au.write_audit_report(result, out)
    px = result.spaces["pixel"].memorization
    print(f"memorized {int(px.memorized.sum())}/{len(px.ratio)} ({px.fraction:.1%}); "
          f"duplicates in train {len(result.duplicates.dropped)}; report: {report}")
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


def build_parser() -> argparse.ArgumentParser:
    from .experiments.generalization import PRESETS, SweepConfig
    from .training import TrainConfig

    p = argparse.ArgumentParser(prog="pydiffgen", description=__doc__.splitlines()[0])
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="the memorization→generalization sweep on built-in data")
    s.add_argument("--out", help="output folder (default runs/demo)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("sweep", help="train pairs of models on disjoint subsets, compare")
    s.add_argument("--preset", help=f"start from a preset: {', '.join(PRESETS)}")
    s.add_argument("--out", help="output folder (default runs/<name>)")
    s.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    s.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip what a previous run of the same config finished")
    cfgmod.add_arguments(s, SweepConfig)
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser("report", help="rebuild report.html of a finished sweep")
    s.add_argument("run", help="the sweep's output folder")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("train", help="train one denoiser")
    s.add_argument("--data", required=True, help="dataset name (pydiffgen datasets)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    s.add_argument("--model", default="bf_unet", help="bf_unet | bf_cnn | unet | mlp")
    s.add_argument("--model-option", action="append", metavar="KEY=VALUE")
    s.add_argument("--out", required=True, help="checkpoint folder")
    s.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    cfgmod.add_arguments(s, TrainConfig)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample from a trained denoiser")
    s.add_argument("--model", required=True, help="checkpoint folder or model.safetensors")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--shape", help="C,H,W (default: from the checkpoint)")
    s.add_argument("--method", default="kadkhodaie", help="kadkhodaie | euler | heun | ddpm")
    s.add_argument("--sampler-option", action="append", metavar="KEY=VALUE")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", required=True, help=".npy array or .png grid")
    s.set_defaults(func=cmd_sample)

    from .experiments.gaussian_structure import PRESETS as GAUSSIAN_PRESETS
    from .experiments.gaussian_structure import GaussianConfig

    s = sub.add_parser("gaussian", help="hidden Gaussian structure: network vs linear, "
                       "Gaussian and empirical denoisers across noise levels")
    s.add_argument("--preset", help=f"start from a preset: {', '.join(GAUSSIAN_PRESETS)}")
    s.add_argument("--out", help="output folder (default runs/<name>)")
    s.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    s.add_argument("--report-only", metavar="RUN", help="rebuild report.html of a finished run")
    s.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the models and analyses a previous run of the same config stored")
    cfgmod.add_arguments(s, GaussianConfig)
    s.set_defaults(func=cmd_gaussian)

    from .experiments.memorization_factors import PRESETS as FACTOR_PRESETS
    from .experiments.memorization_factors import FactorConfig

    s = sub.add_parser("memorization", help="where models memorize: noise-level gap, "
                       "trajectory probe, 2-D toy, factor sweeps")
    acts = s.add_subparsers(dest="action", required=True)
    a = acts.add_parser("gap", help="gap vs sigma and trajectory probe of a trained model")
    a.add_argument("--model", required=True, help="checkpoint folder")
    a.add_argument("--data", required=True, help="the dataset the model was trained on")
    a.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    a.add_argument("--n-train", type=int, required=True, help="trained on the first N images")
    a.add_argument("--n-heldout", type=int, default=64, help="held-out: the last images")
    a.add_argument("--n-samples", type=int, default=64, help="samples for the probe")
    a.add_argument("--out", required=True, help="output folder")
    a = acts.add_parser("toy2d", help="the 2-D circle toy: MLP vs exact vs blurred optimum")
    a.add_argument("--steps", type=int, default=1500)
    a.add_argument("--delta", type=float, default=0.1)
    a.add_argument("--n-points", type=int, default=32)
    a.add_argument("--out", default="runs/toy2d")
    a = acts.add_parser("factors", help="factor sweeps (time, width, N, classes, guidance)")
    a.add_argument("--preset", help=f"start from a preset: {', '.join(FACTOR_PRESETS)}")
    a.add_argument("--out", help="output folder (default runs/<name>)")
    a.add_argument("--dry-run", action="store_true", help="list the points and exit")
    a.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    cfgmod.add_arguments(a, FactorConfig)
    a = acts.add_parser("report", help="rebuild report.html of a finished factor sweep")
    a.add_argument("run", help="the sweep's output folder")
    s.set_defaults(func=cmd_memorization)

    s = sub.add_parser("jacobian", help="Jacobian eigenvalues, adaptive basis and effective "
                       "dimension of a trained denoiser")
    s.add_argument("--model", required=True, help="checkpoint folder or model.safetensors")
    s.add_argument("--data", required=True, help="dataset of the clean images (pydiffgen datasets)")
    s.add_argument("--data-option", action="append", metavar="KEY=VALUE")
    s.add_argument("--n", type=int, default=4, help="images (a seeded random choice)")
    s.add_argument("--sigmas", default="0.05,0.2,0.8", help="noise levels, comma list")
    s.add_argument("--k", type=int, default=None, help="eigenpairs per Jacobian (default: all)")
    s.add_argument("--show", type=int, default=8, help="eigenvectors shown per image")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.add_argument("--out", default="runs/jacobian", help="output folder")
    s.set_defaults(func=cmd_jacobian)

    from .experiments.optimal_basis import PRESETS as BASIS_PRESETS
    from .experiments.optimal_basis import OptimalBasisConfig

    s = sub.add_parser("optimal-basis", help="do trained denoisers find the optimal basis? "
                       "C^alpha PSNR slopes, disk/ray tangent spaces, Gaussian eigenvectors")
    s.add_argument("--preset", help=f"start from a preset: {', '.join(BASIS_PRESETS)}")
    s.add_argument("--out", help="output folder (default runs/<name>)")
    s.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    s.add_argument("--report-only", metavar="RUN", help="rebuild report.html of a finished run")
    s.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the models and analyses a previous run of the same config stored")
    cfgmod.add_arguments(s, OptimalBasisConfig)
    s.set_defaults(func=cmd_optimal_basis)

    from .experiments.audit import AuditConfig

    s = sub.add_parser("audit", help="memorization audit: are samples copies of training images")
    s.add_argument("--samples", help=".npy, .npz (FILE.npz:KEY) or image folder of samples")
    s.add_argument("--train", required=True, help="the training set: .npy, .npz or folder")
    s.add_argument("--features", help=".npz with embeddings 'samples' [M, D] and 'train' [N, D]")
    s.add_argument("--model", help="instead of --samples: a pydiffgen checkpoint or a "
                   "diffusers UNet2DModel folder to sample from")
    s.add_argument("--n", type=int, default=64, help="samples to draw from --model")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--method", help="kadkhodaie | euler | heun | ddpm (default: kadkhodaie "
                   "for blind models, else heun)")
    s.add_argument("--sampler-option", action="append", metavar="KEY=VALUE")
    s.add_argument("--device", default="cpu", help="where sampling and the searches run")
    s.add_argument("--out", default="runs/audit", help="output folder (default runs/audit)")
    cfgmod.add_arguments(s, AuditConfig)
    s.set_defaults(func=cmd_audit)

    s = sub.add_parser("backends", help="what was built and which backends can run")
    s.set_defaults(func=cmd_backends)
    s = sub.add_parser("datasets", help="list dataset names")
    s.set_defaults(func=cmd_datasets)
    return p


# commands that share their work among torchrun's ranks; the others run on rank 0 only
_DISTRIBUTED_COMMANDS = ("train", "sweep", "demo", "audit")


def _world() -> int:
    from . import distributed

    return distributed.world_size()


def _is_main() -> bool:
    from . import distributed

    return distributed.is_main()


def _barrier() -> None:
    from . import distributed

    distributed.barrier()


def main(argv=None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if "WORLD_SIZE" in os.environ:  # under torchrun: join the process group first
            from . import distributed

            distributed.init()
            if args.command not in _DISTRIBUTED_COMMANDS and not distributed.is_main():
                return 0  # the other commands run once, on rank 0
        return args.func(args)
    except PydiffgenError as err:
        print(f"pydiffgen: error: {err}", file=sys.stderr)
        return 1
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
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
