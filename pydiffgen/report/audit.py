"""Figures and the HTML report of the memorization audit (pydiffgen.experiments.audit).

Every plotted number comes from the audit's summary (``audit.json``): histograms are drawn
from its stored counts, so the figures and the JSON agree exactly.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .figures import BASELINE, NEAREST, PAIRED, image_grid  # noqa: E402
from .html import Report  # noqa: E402

__all__ = ["audit_report", "cosine_figure", "encoder_section", "ratio_figure"]


def _bars(ax, edges, counts, color, label, alpha):
    edges, counts = np.asarray(edges), np.asarray(counts, dtype=float)
    total = counts.sum()
    density = counts / (total * np.diff(edges)) if total else counts
    ax.stairs(density, edges, fill=True, color=color, alpha=alpha, label=label)


def ratio_figure(spaces: dict):
    """Distribution of r = ‖x−NN1‖/‖x−NN2‖ per space, with the memorization threshold."""
    fig, axes = plt.subplots(1, len(spaces), figsize=(4.6 * len(spaces), 3.0), squeeze=False)
    for ax, (name, s) in zip(axes[0], spaces.items()):
        h = s["ratio_histogram"]
        _bars(ax, h["edges"], h["counts"], PAIRED, "samples", 0.75)
        ax.axvline(s["threshold"], color="k", ls="--", lw=1,
                   label=f"memorized below {s['threshold']:.3g}")
        ax.set_xlabel("‖x − NN1‖ / ‖x − NN2‖")
        ax.set_title(f"{name}: {s['memorized_fraction']:.1%} memorized")
        ax.set_yticks([])
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cosine_figure(spaces: dict):
    """Nearest cosine of samples to the training set against the train-vs-train
    background (each training image vs its nearest other training image)."""
    fig, axes = plt.subplots(1, len(spaces), figsize=(4.6 * len(spaces), 3.0), squeeze=False)
    for ax, (name, s) in zip(axes[0], spaces.items()):
        h = s["cosine_histogram"]
        _bars(ax, h["edges"], h["background"], BASELINE, "training vs nearest other training",
              0.6)
        _bars(ax, h["edges"], h["samples"], NEAREST, "sample vs nearest training", 0.6)
        ax.set_xlabel("cosine similarity" + (" (mean-removed)" if s["centered_cosine"] else ""))
        ax.set_title(name)
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _images(x, idx):
    return x[list(idx)].detach().cpu().float().numpy()


def encoder_section(rep: Report, section: dict) -> None:
    """The feature-space metrics of ``audit --encoder`` as a table with their intervals."""
    rep.heading(f"Feature space: {section['encoder']} ({section['feature_dim']} features)")
    rep.paragraph("The field's metrics of the samples against the training set (PRDC with "
                  "the training set as the real one), each with its interval over half-samples "
                  "of both sets.", "note")
    rep.table(["metric", "value", "low", "high"],
              [[name, r["value"], r["low"], r["high"]] for name, r in section["metrics"].items()])


def audit_report(result, summary: dict, out_dir) -> Path:
    """report.html of an audit: verdict, numbers, ratio and cosine figures, the most-copied
    samples beside their training matches, and the training set's duplicates."""
    out = Path(out_dir)
    rep = Report("Memorization audit", out)
    rep.paragraph(summary["verdict"], "verdict")
    rep.table(
        ["space", "samples", "training images", "memorized", "median d1/d2",
         "median nearest cosine", "background median", "background p95",
         "samples above background p95"],
        [[name, summary["n_samples"], summary["n_train"],
          f"{s['memorized_count']} ({s['memorized_fraction']:.1%})", s["ratio"]["median"],
          s["nearest_cosine"]["median"], s["background_cosine"]["median"],
          s["background_cosine"]["p95"], f"{s['above_background_p95']:.1%}"]
         for name, s in summary["spaces"].items()],
    )

    if summary.get("encoder_metrics"):
        encoder_section(rep, summary["encoder_metrics"])

    rep.heading("Relative distance to the nearest training image")
    rep.figure(ratio_figure(summary["spaces"]), "ratio",
               "Ratio of the distance to the nearest training image over the distance to the "
               "second nearest (Yoon et al. 2023; Carlini et al. 2023): a sample below the "
               "dashed line is a copy of one training image.")

    rep.heading("Nearest cosine against the training set's own background")
    rep.figure(cosine_figure(summary["spaces"]), "cosine",
               "Best cosine similarity of each sample to any training image, against each "
               "training image's best match among the other training images (Somepalli et "
               "al. 2023).")

    images = result.samples.ndim == 4
    rep.heading("Most-copied samples")
    for name, s in summary["spaces"].items():
        top = s["most_copied"]
        rep.table(["sample", f"nearest training image ({name})", "d1/d2", "d1",
                   "nearest cosine", "memorized"],
                  [[t["sample"], t["train_index"], t["ratio"], t["d1"], t["nearest_cosine"],
                    "yes" if t["memorized"] else "no"] for t in top])
        if images and top:
            fig = image_grid([("sample", _images(result.samples, [t["sample"] for t in top])),
                              ("training match",
                               _images(result.train, [t["train_index"] for t in top]))])
            rep.figure(fig, f"most_copied_{name}",
                       f"Samples with the smallest ratio ({name} space), each above its nearest "
                       "training image.")

    dup = summary["duplicates"]
    rep.heading("Duplicates inside the training set")
    rep.paragraph(
        f"{dup['n_duplicates']} of {dup['n_train']} training images ({dup['fraction']:.1%}) "
        f"have |correlation| > {dup['threshold']:g} with an earlier image (after average "
        f"pooling to at most {dup['pool']}×{dup['pool']}) and are dropped by de-duplication; "
        f"{dup['n_unique']} remain. Each is listed with the kept image it correlates with "
        "most."
    )
    if dup["pairs"]:
        rep.table(["image", "duplicate of", "correlation"],
                  [[p["image"], p["duplicate_of"], p["correlation"]] for p in dup["pairs"]])
        if images:
            pairs = dup["pairs"][:8]
            fig = image_grid([("duplicate", _images(result.train, [p["image"] for p in pairs])),
                              ("kept image",
                               _images(result.train, [p["duplicate_of"] for p in pairs]))])
            rep.figure(fig, "duplicates", "Duplicated training images above their kept match.")

    rep.heading("Inputs")
    rep.code("\n".join(
        [f"samples: {summary['n_samples']}  training images: {summary['n_train']}  "
         f"image shape: {tuple(summary['image_shape'])}"]
        + [f"{k}: {v}" for k, v in summary["sources"].items()]
        + [f"config: {summary['config']}"]
    ))
    return rep.save()
