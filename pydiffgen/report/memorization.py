"""Report sections and figures of the memorization analyses (docs/science.md): gap vs σ,
trajectory probe, 2-D toy flow fields, factor sweeps."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .figures import finish  # noqa: E402
from .html import Report  # noqa: E402

__all__ = ["factor_report", "flow_fields_figure", "gap_figure", "toy2d_report",
           "trajectory_figure"]


def _finite(values):
    return [v if v is not None and math.isfinite(v) else np.nan for v in values]


def gap_figure(curves: dict, title: str = "", *, show_errors: bool = True):
    """G(σ) (left) and E_train / E_val (right) per curve; curves: {label: GapResult dict}."""
    ncols = 2 if show_errors else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 3.4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for i, (label, g) in enumerate(curves.items()):
        color = cmap(i / max(1, len(curves) - 1))
        axes[0][0].plot(g["sigma"], _finite(g["gap"]), "-", color=color, label=str(label))
        if show_errors:
            axes[0][1].plot(g["sigma"], g["error_train"], "-", color=color, label=f"{label} train")
            axes[0][1].plot(g["sigma"], g["error_heldout"], "--", color=color)
    ax = axes[0][0]
    ax.set_xscale("log")
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xlabel("σ")
    ax.set_ylabel("G(σ) = (E_val − E_train)/E_train")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if show_errors:
        ax = axes[0][1]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("σ")
        ax.set_ylabel("E(σ): solid train, dashed held-out")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def trajectory_figure(summary: dict):
    """Median nearest cosine to train / held-out along the sampling path and for
    reconstructions of noisy train and held-out images (``TrajectoryProbe.summary()``)."""
    s = summary["sigma"]
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    ax.plot(s, summary["path_train"], "o-", color="#c0392b", label="trajectory vs train")
    ax.plot(s, summary["path_heldout"], "o--", color="#c0392b", label="trajectory vs held-out")
    ax.plot(s, summary["recon_heldout_train"], "s-", color="#2c3e50",
            label="noisy held-out recon. vs train")
    ax.plot(s, summary["recon_heldout_heldout"], "s--", color="#2c3e50",
            label="noisy held-out recon. vs held-out")
    ax.set_xscale("log")
    ax.invert_xaxis()
    return finish(fig, ax, "σ_i (sampling proceeds to the right)", "median nearest cosine")


def flow_fields_figure(toy: dict):
    """Quivers of D(x; σ) − x for each denoiser (rows) and σ (columns), arrows clipped to
    the grid spacing; train points red, held-out points blue."""
    names = list(toy["denoisers"])
    sigmas = list(next(iter(toy["denoisers"].values()))["flow"])
    fig, axes = plt.subplots(len(names), len(sigmas), figsize=(2.6 * len(sigmas),
                                                                2.6 * len(names)),
                             squeeze=False)
    tr, ho = np.asarray(toy["train"]), np.asarray(toy["heldout"])
    for r, name in enumerate(names):
        for col, s in enumerate(sigmas):
            grid, disp = (np.asarray(t) for t in toy["denoisers"][name]["flow"][s])
            # arrows longer than the grid spacing are clipped to it (direction kept)
            step = (grid[:, 0].max() - grid[:, 0].min()) / max(1, np.sqrt(len(grid)) - 1)
            length = np.linalg.norm(disp, axis=1, keepdims=True)
            disp = disp * np.minimum(1.0, 0.9 * step / np.maximum(length, 1e-12))
            ax = axes[r][col]
            ax.quiver(grid[:, 0], grid[:, 1], disp[:, 0], disp[:, 1], angles="xy",
                      scale_units="xy", scale=1, width=0.004, color="#555")
            ax.scatter(tr[:, 0], tr[:, 1], s=10, color="#c0392b", zorder=3)
            ax.scatter(ho[:, 0], ho[:, 1], s=10, color="#3498db", zorder=3)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"σ = {s:g}")
            if col == 0:
                ax.set_ylabel(name)
    fig.tight_layout()
    return fig


def toy_samples_figure(toy: dict):
    names = list(toy["denoisers"])
    fig, axes = plt.subplots(1, len(names), figsize=(3 * len(names), 3), squeeze=False)
    tr, ho = np.asarray(toy["train"]), np.asarray(toy["heldout"])
    for ax, name in zip(axes[0], names):
        x = np.asarray(toy["denoisers"][name]["samples"])
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.4, color="#555")
        ax.scatter(tr[:, 0], tr[:, 1], s=14, color="#c0392b", label="train")
        ax.scatter(ho[:, 0], ho[:, 1], s=14, color="#3498db", label="held-out")
        ax.set_aspect("equal")
        ax.set_title(name)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def toy2d_report(toy: dict, out_dir) -> Path:
    """report.html of :func:`pydiffgen.analysis.toy2d.toy2d_experiment`."""
    rep = Report("2-D toy: exact optimum, δ-blurred optimum and a trained MLP", out_dir)
    c = toy["config"]
    rep.paragraph(
        f"{c['n_points']} points on the unit circle, alternate points train / held-out "
        f"(spacing {toy['spacing']:.3f}). MLP {c['hidden']}×{c['depth']}, {c['steps']} EDM "
        f"steps ({toy['train_seconds']:.1f} s); blur δ = {c['delta']}; the blur closest to "
        f"the MLP is δ = {toy['fit_delta']['delta']} (RMSE {toy['fit_delta']['rmse']:.4f})."
    )
    rows = []
    for name, d in toy["denoisers"].items():
        g = d["gap"]
        rows.append([name, g["peak_sigma"], g["peak_gap"], d["memorized_fraction"],
                     d["nearer_heldout_fraction"], d["mean_radius_error"]])
    rep.table(["denoiser", "peak σ", "peak G", "memorized", "nearer held-out",
               "|‖x‖ − 1|"], rows)
    rep.figure(flow_fields_figure(toy), "toy2d_flow", "D(x; σ) − x on a grid (arrows clipped "
               "to the grid spacing); red: train, blue: held-out points.")
    rep.figure(gap_figure({k: d["gap"] for k, d in toy["denoisers"].items()},
                          "relative gap vs σ"), "toy2d_gap")
    rep.figure(toy_samples_figure(toy), "toy2d_samples", "Deterministic Heun samples.")
    return rep.save()


def factor_report(out_dir, config, points: list[dict], results: dict) -> Path:
    """report.html of a factor sweep: per factor, the gap curves and a summary table."""
    rep = Report(f"What makes a model memorize: {config.name}", out_dir)
    rep.paragraph(
        f"{config.dataset}, EDM UNet ({config.levels} levels), base setting N = "
        f"{config.n_train}, width {config.width}, {config.steps} steps; one factor varies at "
        "a time. Gap G(σ) = (E_val − E_train)/E_train on "
        f"{min(config.gap_images, config.n_heldout)} images per split; memorized = share of "
        f"{config.n_samples} Heun samples with nearest/second-nearest distance ratio < 1/3."
    )
    factors = [f for f in config.factors]
    header = ["factor", "value", "peak σ", "peak G", "mean G (σ∈[0.05,10])", "memorized",
              "gen. score"]
    rows = []
    for f in factors:
        pts = [p for p in points if p["factor"] == f]
        curves = {f"{f}={p['value']}": results[p["key"]]["gap"] for p in pts}
        rep.heading(f"Factor: {f}")
        rep.figure(gap_figure(curves, f"gap vs σ, varying {f}"), f"factor_{f}_gap")
        for p in pts:
            r = results[p["key"]]
            rows.append([f, p["value"], r["peak_sigma"], r["peak_gap"], r["mean_gap"],
                         "n/a" if r["memorized_fraction"] is None else r["memorized_fraction"],
                         r["generalization_score"]])
    rep.heading("Summary")
    rep.table(header, rows)
    rep.figure(_factor_summary(factors, points, results), "factor_summary",
               "Memorized fraction and mean gap per factor value.")
    return rep.save()


def _factor_summary(factors, points, results):
    fig, axes = plt.subplots(1, len(factors), figsize=(2.8 * len(factors), 2.8),
                             squeeze=False)
    for ax, f in zip(axes[0], factors):
        pts = [p for p in points if p["factor"] == f]
        xs = list(range(len(pts)))
        mem = [results[p["key"]]["memorized_fraction"] for p in pts]
        ax.plot(xs, [np.nan if m is None else m for m in mem], "o-", color="#c0392b",
                label="memorized")
        ax2 = ax.twinx()
        ax2.plot(xs, [results[p["key"]]["mean_gap"] for p in pts], "s--", color="#2c3e50",
                 label="mean G")
        ax.set_xticks(xs, [str(p["value"]) for p in pts])
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(f)
    axes[0][0].set_ylabel("memorized fraction (red)")
    fig.tight_layout()
    return fig
