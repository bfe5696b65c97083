"""Figures of the memorization-to-generalization sweep (Kadkhodaie et al. 2024, Fig. 2-3)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PAIRED = "#c0392b"
NEAREST = "#2c3e50"
BASELINE = "#95a5a6"


def similarity_histograms(per_n: dict):
    """One panel per N: paired similarity (model A vs B from the same seed) against
    each sample's similarity to its nearest training image, and the S1-vs-S2 baseline.

    per_n: {N: {"paired": [M], "nearest": [2M], "baseline": [K]}} of cosines.
    """
    ns = sorted(per_n)
    fig, axes = plt.subplots(1, len(ns), figsize=(3.2 * len(ns), 2.8), sharey=False,
                             squeeze=False)
    bins = np.linspace(-0.2, 1.0, 49)
    for ax, n in zip(axes[0], ns):
        d = per_n[n]
        lo = min(bins[0], *(np.min(d[key]) for key in ("paired", "nearest", "baseline")))
        b = np.linspace(lo, 1.0, 49) if lo < bins[0] else bins
        ax.hist(d["baseline"], bins=b, color=BASELINE, alpha=0.6, density=True,
                label="closest S1–S2 pair")
        ax.hist(d["nearest"], bins=b, color=NEAREST, alpha=0.6, density=True,
                label="sample vs nearest training")
        ax.hist(d["paired"], bins=b, color=PAIRED, alpha=0.7, density=True,
                label="model A vs model B")
        ax.set_title(f"N = {n}")
        ax.set_xlabel("cosine similarity")
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def median_curves(ns, paired, nearest, baseline):
    """Median similarities against training-set size N (log axis)."""
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    ax.plot(ns, paired, "o-", color=PAIRED, label="model A vs model B")
    ax.plot(ns, nearest, "s-", color=NEAREST, label="sample vs nearest training")
    ax.plot(ns, baseline, "^--", color=BASELINE, label="closest S1–S2 pair")
    ax.set_xscale("log")
    ax.set_xlabel("training-set size N")
    ax.set_ylabel("median cosine similarity")
    ax.set_ylim(top=1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def image_grid(rows: list[tuple[str, np.ndarray]], title: str | None = None):
    """Rows of images [K, C, H, W] in [-1, 1], one labelled row each."""
    k = max(len(imgs) for _, imgs in rows)
    fig, axes = plt.subplots(len(rows), k, figsize=(0.9 * k + 1.2, 0.95 * len(rows)),
                             squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(k):
            ax = axes[r][c]
            blank_axis(ax)
            if c < len(imgs):
                ax.imshow(_to_display(imgs[c]), cmap="gray", vmin=0, vmax=1,
                          interpolation="nearest")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
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
