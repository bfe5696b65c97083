"""Where one model memorizes (docs/science.md#per-sigma-gap): the noise-level gap and
trajectory probe of a trained checkpoint (``pydiffgen memorization gap``), and the 2-D
circle toy of Kaiser & Kollmann (``pydiffgen memorization toy2d``). Each writes its
results and ``report.html`` into ``out_dir``; the factor sweeps are in
:mod:`pydiffgen.experiments.memorization_factors`.
"""

from __future__ import annotations

from ..errors import InputError
from ..io import write_json
from ._runs import hold_folder

__all__ = ["checkpoint_gap", "toy2d"]


def checkpoint_gap(model_path, data: str, *, n_train: int, data_options: dict | None = None,
                   n_heldout: int = 64, n_samples: int = 64, out_dir="runs/gap") -> dict:
    """Gap G(σ) and trajectory probe of the checkpoint ``model_path``, trained on the first
    ``n_train`` images of ``data``; held out: its last ``n_heldout`` images.

    Writes ``gap.json`` and ``report.html``; returns ``{"gap": GapResult, "trajectory":
    summary, "report": path}``.
    """
    from .. import data as datamod
    from ..analysis import noise_level_gap, trajectory_probe
    from ..checkpoint import load_model
    from ..report import memorization as rm
    from ..report.html import Report

    for name, v in (("n_train", n_train), ("n_heldout", n_heldout), ("n_samples", n_samples)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive integer, got {v!r}")
    x = datamod.load(data, **(data_options or {}))
    if n_train + n_heldout > len(x):
        raise InputError(f"n_train={n_train} plus n_heldout={n_heldout} needs "
                         f"{n_train + n_heldout} images but {data} has {len(x)}")
    model = load_model(model_path).eval()
    if getattr(model, "name", "") == "mlp":
        x = x.reshape(len(x), -1)
    train, heldout = x[:n_train], x[len(x) - n_heldout:]
    with hold_folder(out_dir, "gap run") as out:
        gap = noise_level_gap(model, train, heldout, n_images=min(len(train), len(heldout)))
        probe = trajectory_probe(model, train, heldout, n_samples=n_samples).summary()
        write_json(out / "gap.json", {"gap": gap.to_dict(), "trajectory": probe})
        rep = Report(f"Noise-level gap: {model_path}", out)
        rep.figure(rm.gap_figure({"model": gap.to_dict()}), "gap")
        rep.figure(rm.trajectory_figure(probe), "trajectory")
        return {"gap": gap, "trajectory": probe, "report": rep.save()}


def toy2d(config, out_dir="runs/toy2d", *, progress: bool = True) -> dict:
    """Run :func:`pydiffgen.analysis.toy2d.toy2d_experiment` with ``config`` (a
    ``Toy2DConfig``) and write its ``report.html``; returns the toy's results with
    ``"report"`` (the report's path) added."""
    from ..analysis.toy2d import toy2d_experiment
    from ..report.memorization import toy2d_report

    with hold_folder(out_dir, "toy2d run") as out:
        toy = toy2d_experiment(config, progress=progress)
        return {**toy, "report": toy2d_report(toy, out)}
