"""Figures and HTML report of ``pydiffgen closed-form``: which closed-form denoiser
predicts a trained network at each noise level (r² and RMSE curves, calibrated patch
sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402

from .figures import finish, image_grid  # noqa: E402
from .html import Report  # noqa: E402

STYLE = {  # model: (label, colour, line style)
    "empirical": ("empirical optimum D_M", "#2c3e50", "-"),
    "gaussian": ("Gaussian D_G", "#c0392b", "-"),
    "blurred": ("blurred optimum", "#7f8c8d", "--"),
    "smoothed": ("smoothed optimum", "#95a5a6", ":"),
    "LS": ("LS (local)", "#2980b9", "-"),
    "ELS": ("ELS (equivariant local)", "#27ae60", "-"),
    "PSPC": ("PSPC (patch composite)", "#8e44ad", "-"),
}


def metric_curves(metrics: dict, key: str, ylabel: str):
    """``metrics[key][model]`` against σ, one line per model (log σ)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for model, values in metrics[key].items():
        label, color, style = STYLE.get(model, (model, None, "-"))
        ax.plot(metrics["sigma"], values, style, marker="o", ms=3, color=color, label=label)
    ax.set_xscale("log")
    if key == "r2":
        ax.set_ylim(max(-0.5, min(min(v) for v in metrics[key].values()) - 0.05), 1.02)
    else:
        ax.set_yscale("log")
    return finish(fig, ax, "noise level σ", ylabel, fontsize=7, loc="best")


def patch_size_curves(metrics: dict):
    """The calibrated patch size of LS, ELS and PSPC against σ."""
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    for model, sizes in metrics["patch_size"].items():
        label, color, _ = STYLE.get(model, (model, None, "-"))
        ax.plot(metrics["sigma"], sizes, "o-", ms=3, color=color, label=label)
    ax.set_xscale("log")
    return finish(fig, ax, "noise level σ", "calibrated patch size s", fontsize=7)


SHOWN = 8  # samples per row of the grid


def samples_section(rep: Report, samples: dict, config: dict) -> None:
    """The closed forms' samples beside the network's, from the same initial noise: median
    cosine to the network's sample, fraction of copies, and a grid."""
    rep.heading("Samples from the network's own initial noise")
    models = [m for m in samples if m != "network"]
    rep.paragraph(
        f"{len(samples['network']['samples'])} deterministic Heun samples "
        f"({config['sampler_steps']} steps, seed {config['seed']}) of the network and of each "
        "closed form, all from the same initial noise. Cosine: each closed form's sample "
        "against the network's sample from the same noise; memorized: NN1/NN2 < 1/3 against "
        "the training set.")
    rep.table(["denoiser", "median cosine to the network", "memorized"],
              [["network", "—", f"{100 * samples['network']['memorized']:.0f}%"]]
              + [[STYLE.get(m, (m,))[0], float(np.median(samples[m]["cosine"])),
                  f"{100 * samples[m]['memorized']:.0f}%"] for m in models])
    rows = [("network", np.asarray(samples["network"]["samples"][:SHOWN]))]
    notes = [None]
    for m in models:
        rows.append((m, np.asarray(samples[m]["samples"][:SHOWN])))
        notes.append([f"{c:.2f}" for c in samples[m]["cosine"][:SHOWN]])
    rep.figure(image_grid(rows, notes=notes), "samples",
               "Each column starts from the same noise; under each closed-form sample its "
               "cosine to the network's sample in that column.")


def closed_form_report(out_dir, metrics: dict) -> Path:
    """Write ``<out_dir>/report.html`` (and its PNGs) from the experiment's metrics."""
    config, data = metrics["config"], metrics["dataset"]
    rep = Report(f"Closed-form denoisers vs {config['model']}", out_dir)
    rep.paragraph(
        f"Network {config['model']}, data {data['name']} ({data['train']} training images: "
        f"{data.get('source', 'the first ones')}; {data['held_out']} held out, shape "
        f"{data['shape']}). At each σ every denoiser sees "
        "the same held-out noisy images (fixed noise, seed "
        f"{config['seed']}); r² = 1 − ‖D_net − D‖² / ‖D_net − mean D_net‖².")
    rep.paragraph("Best predictor of the network per σ: " + ", ".join(
        f"σ={s:g}: {b} (r² {metrics['r2'][b][i]:.3f})"
        for i, (s, b) in enumerate(zip(metrics["sigma"], metrics["best"], strict=True))),
        "verdict")
    rep.figure(metric_curves(metrics, "r2", "r² of the network's output"), "r2",
               "How much of the network's output each closed form explains.")
    rep.figure(metric_curves(metrics, "rmse", "RMSE = mean sqrt(‖D_net − D‖²/d)"), "rmse")
    rep.figure(patch_size_curves(metrics), "patch_size",
               "Patch size s per σ that best predicts the network (largest r²).")
    models = list(metrics["r2"])
    rep.table(["σ", "best", *models, "s LS/ELS/PSPC"], [
        [s, metrics["best"][i], *(metrics["r2"][m][i] for m in models),
         "/".join(str(metrics["patch_size"][m][i]) for m in metrics["patch_size"])]
        for i, s in enumerate(metrics["sigma"])])
    if "samples" in metrics:
        samples_section(rep, metrics["samples"], config)
    rep.heading("Calibration: r² of every candidate patch size")
    rep.code(json.dumps({f"{s:g}": c for s, c in zip(metrics["sigma"],
                                                       metrics["calibration"], strict=True)},
                        indent=1))
    return rep.save()
