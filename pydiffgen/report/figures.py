"""Figures of the memorization-to-generalization sweep (Kadkhodaie et al. 2024, Fig. 2-3)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

PAIRED = "#c0392b"
NEAREST = "#2c3e50"
BASELINE = "#95a5a6"


PAGE_WIDTH = 10.0  # inches: the report's 1100 px column at the figures' 110 dpi
PANELS_PER_ROW = 4


def similarity_histograms(per_n: dict):
    """One panel per N: paired similarity (model A vs B from the same seed) against
    each sample's similarity to its nearest training image, and the S1-vs-S2 baseline.
    Every panel shares one x-range, fitted to the data, so that panels compare.

    per_n: {N: {"paired": [M], "nearest": [2M], "baseline": [K]}} of cosines.
    """
    ns = sorted(per_n)
    keys = ("baseline", "nearest", "paired")
    values = np.concatenate([np.asarray(per_n[n][k], dtype=np.float64).ravel()
                             for n in ns for k in keys])
    lo, hi = float(values.min()), min(1.0, float(values.max()))
    pad = max(0.02, 0.04 * (hi - lo))
    bins = np.linspace(lo - pad, min(1.0 + 1e-9, hi + pad), 41)
    style = {"baseline": (BASELINE, 0.6, "closest S1–S2 pair"),
             "nearest": (NEAREST, 0.6, "sample vs nearest training image"),
             "paired": (PAIRED, 0.7, "model A vs model B (same seed)")}
    fig, panels = panel_grid(ns, 2.6, sharex=True)
    for n, ax in panels:
        for key in keys:
            color, alpha, label = style[key]
            ax.hist(per_n[n][key], bins=bins, color=color, alpha=alpha, density=True,
                    label=label)
    return finish_panels(fig, panels, "cosine similarity", "density", ncol=3)


def median_curves(ns, paired, nearest, baseline):
    """Median similarities against training-set size N (log axis, ticks at the N values)."""
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH * 0.7, 3.4))
    ax.plot(ns, paired, "o-", color=PAIRED, label="model A vs model B")
    ax.plot(ns, nearest, "s-", color=NEAREST, label="sample vs nearest training image")
    ax.plot(ns, baseline, "^--", color=BASELINE, label="closest S1–S2 pair")
    ax.set_xscale("log")
    ax.set_xticks(list(ns))
    ax.set_xticklabels([str(n) for n in ns])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("training-set size N")
    ax.set_ylabel("median cosine similarity")
    ax.set_ylim(top=1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def image_grid(rows: list[tuple[str, np.ndarray]], title: str | None = None,
               notes: list[list[str] | None] | None = None):
    """Rows of images [K, C, H, W] in [-1, 1], one labelled row each; ``notes``: per row,
    a short text under each image (e.g. its cosine), or None."""
    k = max(len(imgs) for _, imgs in rows)
    cell = min(0.9, (PAGE_WIDTH - 1.2) / k)
    height = cell * 1.05 + (0.18 if notes else 0)
    fig, axes = plt.subplots(len(rows), k, figsize=(cell * k + 1.2, height * len(rows)
                                                     + (0.35 if title else 0)),
                             squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            blank_axis(ax)
            if c < len(imgs):
                ax.imshow(_to_display(imgs[c]), cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
            if notes and notes[r] and c < len(notes[r]):
                ax.set_xlabel(notes[r][c], fontsize=6, labelpad=1)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11, fontweight="bold")
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.1)
    return fig


def psnr_curves(per_n: dict):
    """Output vs input PSNR of each model on its training images and on held-out images.

    per_n: {N: {"train": {"input_psnr", "output_psnr"}, "test": {...}}}.
    """
    ns = sorted(per_n)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for i, n in enumerate(ns):
        color = cmap(i / max(1, len(ns) - 1))
        tr, te = per_n[n]["train"], per_n[n]["test"]
        ax.plot(tr["input_psnr"], tr["output_psnr"], "-", color=color, label=f"N={n} train")
        ax.plot(te["input_psnr"], te["output_psnr"], "--", color=color, label=f"N={n} test")
    lims = [min(per_n[ns[0]]["train"]["input_psnr"]), max(per_n[ns[0]]["train"]["input_psnr"])]
    ax.plot(lims, lims, ":", color="k", lw=0.8, label="identity")
    return finish(fig, ax, "input PSNR (dB)", "output PSNR (dB)", ncol=2)


def finish(fig, ax, xlabel: str, ylabel: str, *, grid: bool = True, **legend):
    """Label ``ax``, add a light grid and the legend (``legend``: its options, fontsize 7
    unless given), tighten ``fig``'s layout; returns ``fig``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if grid:
        ax.grid(alpha=0.3)
    ax.legend(**{"fontsize": 7, **legend})
    fig.tight_layout()
    return fig


def panel_grid(ns, height: float, **share):
    """One panel per N (``PANELS_PER_ROW`` per row, page-wide, ``height`` inches each;
    ``share``: ``sharex``/``sharey``); unused cells hidden. Returns (fig, [(N, ax)])."""
    cols = min(PANELS_PER_ROW, len(ns))
    rows = -(-len(ns) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_WIDTH, height * rows + 0.5),
                             squeeze=False, **share)
    flat = axes.ravel()
    for ax in flat[len(ns):]:
        ax.set_visible(False)
    return fig, list(zip(ns, flat))


def finish_panels(fig, panels, xlabel: str, ylabel: str, *, ncol: int):
    """Title each panel "N = …", label x everywhere and y on the first column, one
    figure legend below (from the first panel, ``ncol`` columns); returns ``fig``."""
    cols = min(PANELS_PER_ROW, len(panels))
    for i, (n, ax) in enumerate(panels):
        ax.set_title(f"N = {n}", fontsize=10)
        ax.set_xlabel(xlabel)
        if i % cols == 0:
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.25)
    rows = -(-len(panels) // cols)
    handles, labels = panels[0][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 / rows, 1, 1))
    return fig


def blank_axis(ax) -> None:
    """No ticks, no frame: an image-grid cell."""
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def _to_display(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, dtype=np.float32)
    img = img[0] if img.shape[0] == 1 else np.transpose(img[:3], (1, 2, 0))
    return np.clip((img + 1) / 2, 0, 1)
