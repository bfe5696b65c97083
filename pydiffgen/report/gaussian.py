"""Figures and HTML report of the hidden-Gaussian-structure experiment (Li, Dai & Qu 2024)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .figures import finish  # noqa: E402
from .html import Report  # noqa: E402

REGIME_COLORS = {"low": "#d6eaf8", "intermediate": "#fdebd0", "high": "#e8f8f5"}
PAIRS = {
    "net-G": (r"network vs Gaussian $D_G$", "#c0392b", "-"),
    "net-L": (r"network vs linear $D_L$", "#8e44ad", "-"),
    "L-G": (r"$D_L$ vs $D_G$", "#27ae60", "--"),
    "net-M": (r"network vs empirical $D_M$", "#2c3e50", "-"),
    "G-M": (r"$D_G$ vs $D_M$", "#7f8c8d", ":"),
}


def _shade(ax, sigmas, labels):
    """Shade contiguous runs of one regime (boundaries at geometric midpoints)."""
    s = np.asarray(sigmas)
    edges = np.concatenate([[s[0] / 1.2], np.sqrt(s[:-1] * s[1:]), [s[-1] * 1.2]])
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            ax.axvspan(edges[start], edges[i], color=REGIME_COLORS[labels[start]], zorder=0)
            mid = np.sqrt(edges[start] * edges[i])
            ax.text(mid, 0.98, labels[start], transform=ax.get_xaxis_transform(), ha="center",
                    va="top", fontsize=7, color="#555")
            start = i


def distance_curves(sigmas, dist, labels, tol):
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    _shade(ax, sigmas, labels)
    for pair, (label, color, style) in PAIRS.items():
        ax.plot(sigmas, dist[pair]["rmse"], style, marker="o", ms=3, color=color, label=label)
    ax.axhline(tol, color="#999", lw=0.8, ls="-.")
    ax.set_xscale("log")
    ax.set_yscale("log")
    return finish(fig, ax, "noise level σ", "RMSE = mean sqrt(‖D1 − D2‖²/d)", grid=False,
                  loc="lower right")


def linearity_curves(sigmas, linearity, labels):
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    _shade(ax, sigmas, labels)
    ax.plot(sigmas, linearity["net"], "o-", ms=3, color="#c0392b", label="network")
    if "M" in linearity:
        ax.plot(sigmas, linearity["M"], "s-", ms=3, color="#2c3e50", label="empirical D_M")
    ax.set_xscale("log")
    return finish(fig, ax, "noise level σ", "linearity score", grid=False, fontsize=8,
                  loc="lower left")


def weight_comparison(sigmas, weights, labels):
    ex = weights["example"]
    W_L, W_G = np.asarray(ex["W_L"]), np.asarray(ex["W_G"])
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.0))
    ax = axes[0]
    _shade(ax, sigmas, labels)
    ax.plot(sigmas, weights["rel_error"], "o-", ms=3, color="#27ae60")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("σ")
    ax.set_title("‖W_L − W_G‖_F / ‖W_G‖_F", fontsize=9)
    ax = axes[1]
    _shade(ax, sigmas, labels)
    ax.plot(sigmas, weights["mean_cosine"], "o-", ms=3, color="#8e44ad")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("σ")
    ax.set_title("top-k singular subspaces: mean cos", fontsize=9)
    lim = max(np.abs(W_L).max(), np.abs(W_G).max())
    for ax, W, name in ((axes[2], W_L, "W_L (distilled)"), (axes[3], W_G, "W_G (Gaussian)")):
        ax.imshow(W, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(f"{name}, σ = {ex['sigma']:.3g}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def sweep_curves(panels):
    """panels: [(title, {label: (sigmas, rmse)})] — RMSE(network, D_G) vs σ per setting."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 3.2), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels):
        cmap = plt.get_cmap("viridis")
        for i, (label, (s, r)) in enumerate(curves.items()):
            ax.plot(s, r, "o-", ms=2.5, color=cmap(i / max(1, len(curves) - 1)), label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"$\sigma$")
        ax.set_ylabel(r"RMSE(network, $D_G$)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def gaussian_report(out, config, results, summary) -> Path:
    """report.html of the hidden-Gaussian-structure experiment: regimes, distances,
    linearity, W_L vs W_G and the size / width / training-time sweeps."""
    from ..config import to_dict

    out = Path(out)
    main = results["models"][f"n{config.n_train}_w{config.width}"]
    sig, labels = main["sigma"], summary["regimes"]
    rep = Report(f"Hidden Gaussian structure: {config.name}", out)
    rep.paragraph(
        f"{config.dataset}: EDM UNets (levels {config.levels}) trained {config.steps} steps. "
        f"Main model: N = {config.n_train}, width {config.width}. Denoisers compared on "
        f"held-out noisy images at {len(sig)} noise levels: the network, its linear "
        "distillation D_L (exact least squares per σ), the Gaussian denoiser D_G of the "
        "training set's mean and covariance and the empirical optimum D_M."
    )
    rep.paragraph(
        f"Regimes, from the analytic denoisers (agreement threshold RMSE {config.tol}): low "
        "noise where D_G ≈ identity, high noise where D_G ≈ D_M (both ≈ the mean), "
        "intermediate in between. Mean RMSEs and linearity scores per regime:")
    rows = []
    for name, r in summary["per_regime"].items():
        rows.append([name, f"{min(r['sigma']):.3g} – {max(r['sigma']):.3g}", r["rmse_net-G"],
                     r["rmse_net-L"], r["rmse_L-G"], r["rmse_net-M"], r["rmse_G-M"],
                     r["rmse_G-y"], r["linearity_net"], r["linearity_M"]])
    rep.table(["regime", "σ", "net–D_G", "net–D_L", "D_L–D_G", "net–D_M", "D_G–D_M",
               "D_G–id", "LS net", "LS D_M"], rows)
    g = summary["generalization"]
    rep.paragraph(
        f"Generalization score (mean ‖x − NN(x)‖/‖x‖ of samples, > 0.6 ≈ generalizing): "
        f"network {g['net']:.3f}, Gaussian model {g.get('G', float('nan')):.3f}; RMSE between "
        f"network and Gaussian samples from the same noise: "
        f"{g.get('net_vs_G_rmse', float('nan')):.3f}.")

    rep.heading("Distances between denoisers across σ")
    rep.figure(distance_curves(sig, main["dist"], labels, config.tol), "distances",
               "RMSE between denoisers on held-out noisy images (fixed noise per image). "
               "Shaded: the three regimes; dash-dot: the agreement threshold.")
    rep.table(["σ", "regime", "net–D_G", "net–D_L", "D_L–D_G", "net–D_M", "D_G–D_M",
               "D_G–id", "LS net", "LS D_M", "‖W_L−W_G‖/‖W_G‖"],
              [[s, labels[i], *(main["dist"][p]["rmse"][i] for p in
                                ("net-G", "net-L", "L-G", "net-M", "G-M", "G-y")),
                main["linearity"]["net"][i], main["linearity"]["M"][i],
                main["weights"]["rel_error"][i]] for i, s in enumerate(sig)])
    rep.heading("Linearity score")
    rep.figure(linearity_curves(sig, main["linearity"], labels), "linearity",
               "mean |cos(D(αy1 + βy2), αD(y1) + βD(y2))|, α = β = 1/√2.")
    rep.heading("Distilled weights vs Gaussian weights")
    rep.figure(weight_comparison(sig, main["weights"], labels), "weights",
               "Relative Frobenius error and principal-angle cosines (top-16 singular "
               "subspaces) between W_L and W_G = U diag(λ/(λ+σ²)) Uᵀ; both matrices at σ ≈ 1.")
    if summary["adam"]:
        rep.table(["σ", "Adam vs lstsq (rel. error)", "Adam vs W_G"],
                  [[a["sigma"], a["rel_error_vs_lstsq"], a["adam_vs_G"]]
                   for a in summary["adam"]])

    _sweep_section(rep, config, results, summary)
    rep.heading("Configuration")
    rep.code(json.dumps(to_dict(config), indent=2))
    return rep.save()


def _sweep_section(rep: Report, config, results, summary) -> None:
    """RMSE(network, D_G) across training-set size, model width and training time."""
    rep.heading("Training-set size, model width, training time")
    models = results["models"]
    by_n = {f"N = {r['n']}": (r["sigma"], r["dist"]["net-G"]["rmse"])
            for k, r in sorted(models.items(), key=lambda kv: kv[1]["n"])
            if k.endswith(f"_w{config.width}")}
    by_w = {f"width {k.split('_w')[1]}": (r["sigma"], r["dist"]["net-G"]["rmse"])
            for k, r in sorted(models.items(), key=lambda kv: int(kv[0].split("_w")[1]))
            if k.startswith(f"n{config.n_train}_")}
    by_t = {f"step {s}": (r["sigma"], r["dist"]["net-G"]["rmse"])
            for s, r in sorted(results["checkpoints"].items(), key=lambda kv: int(kv[0]))}
    rep.figure(sweep_curves([("training-set size", by_n), ("model width", by_w),
                             ("training time", by_t)]), "sweeps",
               "RMSE between the network and the Gaussian denoiser of its own training set.")
    band = summary["band_sigma"]
    rep.paragraph(f"Mean RMSE(network, D_G) over σ ∈ [{min(band):.3g}, {max(band):.3g}] and "
                  "generalization score of the network's samples:")
    rows = [[f"N = {n}", v["rmse_net_G"], v["generalization"]]
            for n, v in sorted(summary["sizes"].items(), key=lambda kv: int(kv[0]))]
    rows += [[f"width {w}", v["rmse_net_G"], v["generalization"]]
             for w, v in sorted(summary["widths"].items(), key=lambda kv: int(kv[0]))]
    rows += [[f"step {s}", v["rmse_net_G"], v["generalization"]]
             for s, v in sorted(summary["steps"].items(), key=lambda kv: int(kv[0]))]
    rep.table(["setting", "RMSE(net, D_G)", "generalization score"], rows)
