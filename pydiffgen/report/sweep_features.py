"""The sweep report's feature-space section: for each N, the field's memorization and
fidelity metrics (PRDC, FD, KID, AuthPct, C_T, FLD, extraction, copy score) of model A's
samples on an encoder's features, so the memorization → generalization transition reads
in the terms papers use: AuthPct rises, C_T climbs from below 0, the copy score and the
extraction fraction fall as N grows."""

from __future__ import annotations

import math

from . import figures
from .html import Report

# what each row says about memorization, for the table's last column
READING = {
    "authpct": "↑ as samples stop copying",
    "ct": "< 0: copying; → 0 when generalizing",
    "fld.gap": "≪ 0: train likelier than held-out",
    "extraction.fraction": "share of extracted samples",
    "copy.p95": "1: copies; → background",
    "copy.fraction": "share above 0.5 cosine",
}


def sweep_feature_section(rep: Report, per_n: dict) -> None:
    """Heading, the metrics-vs-N figure and one table row per (metric, N).

    per_n: {N: {"encoder", "feature_dim", "metrics": {row: {"value", "low", "high",
    "ci"}}, "skipped": {metric: why}}} (``n<N>/features.json`` of the sweep)."""
    ns = sorted(per_n)
    top = per_n[ns[-1]]  # the smallest N may have been too small to encode
    dim = f" ({top['feature_dim']} features)" if top["feature_dim"] else ""
    rep.heading(f"Feature space: {top['encoder']}{dim}")
    rep.paragraph(
        "The field's metrics of model A's samples (clipped to [-1, 1]) on the encoder's "
        "features: against S1, its training set (AuthPct, C_T, FLD, extraction, copy score), "
        "and against S2, held out from it (PRDC, FD, KID; S2 is C_T's and FLD's test set). "
        "Intervals: value ± z·SE from half-samples of every set drawn without replacement "
        f"(level {_level(per_n):.0%}). A metric the sizes are too small for is left out.",
        "note")
    # table order, from the largest N first (the smallest skips the most)
    names = list(dict.fromkeys(r for n in ns[::-1] for r in per_n[n]["metrics"]))
    if names:
        rep.figure(metric_curves(ns, names, per_n), "feature_metrics",
                   "Each metric against the training-set size N (log scale), with its "
                   "interval; memorization shows at small N, generalization at large N.")
    rep.table(["metric", *[f"N = {n}" for n in ns], "reading"],
              [[name, *[_cell(per_n[n]["metrics"].get(name)) for n in ns],
                READING.get(name, "")] for name in names])
    skipped = sorted({f"{m} at N = {n} ({why})" for n in ns
                      for m, why in per_n[n]["skipped"].items()})
    if skipped:
        rep.paragraph("Skipped: " + "; ".join(skipped), "note")


def _level(per_n: dict) -> float:
    rows = [r for f in per_n.values() for r in f["metrics"].values()]
    return rows[0]["ci"] if rows else 0.95


def _cell(row: dict | None) -> str:
    if row is None:
        return "—"
    return f"{row['value']:.4g} [{row['low']:.3g}, {row['high']:.3g}]"


def metric_curves(ns: list, names: list, per_n: dict):
    """One panel per metric row: value vs N with its interval as an error bar."""
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = figures.plt.subplots(rows, cols, figsize=(figures.PAGE_WIDTH, 2.3 * rows + 0.3),
                                     squeeze=False)
    for ax, name in zip(axes.ravel(), names):
        have = [n for n in ns if name in per_n[n]["metrics"]]
        r = [per_n[n]["metrics"][name] for n in have]
        value = [x["value"] for x in r]
        ax.errorbar(have, value, yerr=[[v - x["low"] for v, x in zip(value, r)],
                                       [x["high"] - v for v, x in zip(value, r)]],
                    fmt="o-", color=figures.NEAREST, ecolor=figures.PAIRED, capsize=3, ms=4)
        ax.set_xscale("log")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(names):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("N", fontsize=8)
    fig.tight_layout()
    return fig
