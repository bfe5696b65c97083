"""Figures and reports of the Jacobian analysis (Kadkhodaie et al. ICLR 2024, §3-4, Figs. 4-7).

A denoiser's Jacobian J(y) has eigenvectors e_k(y), the geometry-adaptive harmonic basis
(GAHB) it shrinks along, and eigenvalues λ_k, the shrinkage factors; tr J is the
effective dimensionality of the signal subspace it keeps. Figures: eigenvalue spectra
against σ and against training-set size N, the top eigenvectors as image grids,
effective dimension against σ; for the optimal-basis experiments, C^α PSNR slopes and
tangent-space angles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from . import figures
from .html import Report

plt = figures.plt


def _sigma_colors(n: int):
    cmap = plt.get_cmap("plasma")
    return [cmap(0.85 * i / max(1, n - 1)) for i in range(n)]


def spectra_vs_sigma(spectra: dict, title: str | None = None, ax=None):
    """Eigenvalues λ_k against k, one curve per σ (log y where positive).

    spectra: {σ: eigenvalues [n] (descending; e.g. averaged over images)}.
    """
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
    sigmas = sorted(spectra, key=float)
    for color, s in zip(_sigma_colors(len(sigmas)), sigmas):
        lam = np.asarray(spectra[s], dtype=np.float64)
        ax.plot(np.arange(1, len(lam) + 1), lam, "-", color=color, lw=1.4,
                label=f"σ = {float(s):g}")
    _spectrum_axes(ax)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    if own:
        fig.tight_layout()
        return fig
    return ax.figure


def spectra_vs_n(per_n: dict):
    """One panel per σ: eigenvalue spectra of models trained on N images, one curve per N.

    per_n: {N: {σ: eigenvalues [n]}}.
    """
    ns = sorted(per_n, key=int)
    sigmas = sorted({float(s) for n in ns for s in per_n[n]})
    fig, axes = plt.subplots(1, len(sigmas), figsize=(3.4 * len(sigmas), 3.0), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, s in zip(axes[0], sigmas):
        for i, n in enumerate(ns):
            match = [v for k, v in per_n[n].items() if math.isclose(float(k), s)]
            if not match:
                continue
            lam = np.asarray(match[0], dtype=np.float64)
            ax.plot(np.arange(1, len(lam) + 1), lam, "-", color=cmap(i / max(1, len(ns) - 1)),
                    lw=1.4, label=f"N = {n}")
        _spectrum_axes(ax)
        ax.set_title(f"σ = {s:g}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _spectrum_axes(ax):
    ax.set_xlabel("k")
    ax.set_ylabel(r"eigenvalue $\lambda_k$")
    lines = [ln.get_ydata() for ln in ax.get_lines()]
    if lines and all(np.all(np.asarray(y) > 0) for y in lines):
        ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.6, ls=":")
    ax.grid(alpha=0.3)


def eigenvector_grid(rows: list, title: str | None = None):
    """Rows of eigenvectors shown as images, each scaled to its own max |value|.

    rows: [(label, vectors [k, C, H, W], eigenvalues [k] or None)]. Eigenvectors are
    signed: grey is 0, white positive, black negative (the sign itself is arbitrary).
    """
    k = max(len(v) for _, v, _ in rows)
    fig, axes = plt.subplots(len(rows), k, figsize=(0.95 * k + 1.4, 1.1 * len(rows) + 0.2),
                             squeeze=False)
    for r, (label, vecs, lams) in enumerate(rows):
        vecs = np.asarray(vecs, dtype=np.float32)
        for c in range(k):
            ax = axes[r][c]
            figures.blank_axis(ax)
            if c >= len(vecs):
                continue
            v = vecs[c]
            v = v[0] if v.shape[0] == 1 else v.mean(0)  # colour: the channel mean
            scale = float(np.abs(v).max()) or 1.0
            shown = ax.imshow(v / scale, cmap="gray", vmin=-1, vmax=1, interpolation="nearest")
            if lams is not None:
                ax.set_title(f"{float(lams[c]):.3g}", fontsize=7)
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    bar = fig.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01,
                       ticks=[-1, 0, 1])
    bar.set_label("value / max |value|", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return fig


def effective_dimension(curves: dict, reference: dict | None = None):
    """Effective dimensionality tr J against σ (log-log), one curve per label.

    curves: {label: (sigmas, dims) or (sigmas, dims, stderr)}; reference: {label: value}
    horizontal lines (e.g. a manifold's dimension).
    """
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    cmap = plt.get_cmap("viridis")
    labels = list(curves)
    for i, label in enumerate(labels):
        sig, dim, *err = curves[label]
        color = cmap(i / max(1, len(labels) - 1))
        if err and err[0] is not None:
            ax.errorbar(sig, dim, yerr=err[0], fmt="o-", color=color, ms=3, capsize=2,
                        label=label)
        else:
            ax.plot(sig, dim, "o-", color=color, ms=3, label=label)
    for label, value in (reference or {}).items():
        ax.axhline(value, color="k", lw=0.8, ls="--")
        ax.text(ax.get_xlim()[0], value, f" {label}", va="bottom", fontsize=7)
    _sigma_ticks(ax, sorted({float(v) for c in curves.values() for v in c[0]}))
    ax.set_yscale("log")
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("effective dimension tr J")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _sigma_ticks(ax, sigmas):
    """Log σ axis labelled at the measured noise levels only (no crowded minor labels)."""
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(sigmas)
    ax.set_xticklabels([f"{s:g}" for s in sigmas])


def psnr_slopes(per_alpha: list):
    """Output vs input PSNR of C^α denoisers with the fitted line and the α/(α+1) slope.

    per_alpha: [{"alpha", "slope", "intercept", "optimal_slope", "fit_range",
    "curve": {"input_psnr", "output_psnr"}}], optionally "linear_curve" (the best linear
    denoiser on the same images, drawn as a thin line: the reference a network must beat).
    """
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    cmap = plt.get_cmap("viridis")
    for i, a in enumerate(per_alpha):
        color = cmap(i / max(1, len(per_alpha) - 1))
        x = np.asarray(a["curve"]["input_psnr"])
        y = np.asarray(a["curve"]["output_psnr"])
        ax.plot(x, y, "o", color=color, ms=3.5)
        if a.get("linear_curve") is not None:
            lin = a["linear_curve"]
            ax.plot(lin["input_psnr"], lin["output_psnr"], "-", color=color, lw=0.6,
                    alpha=0.6)
        lo, hi = a["fit_range"]
        xs = np.array([lo, hi])
        ax.plot(xs, a["slope"] * xs + a["intercept"], "-", color=color,
                label=f"α = {a['alpha']:g}: slope {a['slope']:.2f} "
                      f"(optimal {a['optimal_slope']:.2f})")
        mid = (lo + hi) / 2
        y_mid = a["slope"] * mid + a["intercept"]
        ax.plot(xs, y_mid + a["optimal_slope"] * (xs - mid), ":", color=color, lw=1)
    return figures.finish(fig, ax, "input PSNR (dB)", "output PSNR (dB)")


def tangent_angles(rows: list, name: str):
    """Mean principal angles (degrees) between the top-k Jacobian eigenvectors and the
    tangent space against σ, beside a random k-dimensional subspace.

    rows: [{"sigma", "mean_angles_deg" [k], "random_mean_angles_deg" [k]}].
    """
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    sig = [r["sigma"] for r in rows]
    k = len(rows[0]["mean_angles_deg"])
    cmap = plt.get_cmap("viridis")
    for j in range(k):
        ax.plot(sig, [r["mean_angles_deg"][j] for r in rows], "o-", ms=3,
                color=cmap(j / max(1, k - 1)), label=f"angle {j + 1}")
    ax.plot(sig, [r["random_mean_angles_deg"][0] for r in rows], "k--", lw=0.8,
            label="random subspace (smallest)")
    _sigma_ticks(ax, sig)
    ax.set_ylim(0, 92)
    ax.set_xlabel("noise level σ")
    ax.set_ylabel("principal angle (degrees)")
    ax.set_title(f"{name}: top-{k} eigenvectors vs tangent space", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def shrinkage_curves(per_sigma: list):
    """Shrinkage along the covariance eigenvectors, u_iᵀ J u_i against i, per σ, beside
    the optimum λ_i/(λ_i + σ²).

    per_sigma: [{"sigma", "network": {"shrinkage" [n][d], "optimal_shrinkage" [d]}}].
    """
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    colors = _sigma_colors(len(per_sigma))
    for color, p in zip(colors, per_sigma):
        net = p["network"]
        shrink = np.mean(np.asarray(net["shrinkage"], dtype=np.float64), axis=0)
        i = np.arange(1, len(shrink) + 1)
        ax.plot(i, shrink, "-", color=color, lw=1.2, label=f"σ = {p['sigma']:g}")
        ax.plot(i, net["optimal_shrinkage"], "--", color=color, lw=1)
    ax.set_xscale("log")
    return figures.finish(fig, ax, "covariance eigenvector i (by decreasing variance)",
                          "shrinkage u_iᵀ J u_i")


# ---------------------------------------------------------------------------- reports


def spectra_report(results: dict, out) -> Path:
    """The report of ``pydiffgen jacobian``: spectra vs σ, eigenvector grids, tr J vs σ.

    results: what :func:`pydiffgen.experiments.jacobian_spectra.jacobian_spectra` returns.
    """
    rep = Report(f"Jacobian eigendecomposition: {results['model']}", out)
    rep.paragraph(
        f"{results['n_images']} {results['data']} images of shape {results['shape']} "
        f"(d = {results['d']}), noised at σ = {', '.join(f'{s:g}' for s in results['sigmas'])}. "
        "A bias-free denoiser is f(y) = J(y)·y: it shrinks y along the eigenvectors of its "
        "Jacobian by the eigenvalues (Kadkhodaie et al. 2024); tr J is the effective "
        "dimensionality of the subspace it keeps."
    )
    rep.table(["σ", "input PSNR (dB)", "tr J (mean)", "λ_1 (mean)", "asymmetry (mean)"],
              [[r["sigma"], 20 * math.log10(2 / r["sigma"]), _mean(r["trace"]),
                _mean([lam[0] for lam in r["eigenvalues"]]), _mean(r["asymmetry"])]
               for r in results["per_sigma"]])
    rep.heading("Eigenvalue spectra")
    rep.figure(spectra_vs_sigma({r["sigma"]: _mean_spectrum(r["eigenvalues"])
                                 for r in results["per_sigma"]}),
               "spectra", "Eigenvalues of the symmetric part of J, averaged over images, per σ: "
               "at higher noise fewer directions are kept.")
    rep.heading("Effective dimension")
    rep.figure(effective_dimension({"tr J": (results["sigmas"],
                                             [_mean(r["trace"]) for r in results["per_sigma"]])}),
               "effective_dimension", "tr J against σ, averaged over images.")
    rep.heading("Adaptive basis (top eigenvectors)")
    for i in range(len(results["per_sigma"][0]["eigenvectors"])):
        rows = [(f"σ = {r['sigma']:g}", r["eigenvectors"][i], r["eigenvalues"][i])
                for r in results["per_sigma"]]
        rows.insert(0, ("clean", [results["images"][i]], None))
        rep.figure(eigenvector_grid(rows), f"eigenvectors_{i}",
                   f"Image {i}: top eigenvectors of J at each σ (titles: eigenvalues).")
    rep.heading("Run")
    rep.code(json.dumps({k: v for k, v in results.items()
                         if k not in ("per_sigma", "images")}, indent=2))
    return rep.save()


def optimal_basis_report(out, config, analyses: dict, summary: dict) -> Path:
    """The report of ``pydiffgen optimal-basis``."""
    from ..config import to_dict

    rep = Report(f"Optimal adaptive bases: {config.name}", out)
    rep.paragraph(
        "Bias-free UNets trained on synthetic image classes whose optimal denoiser is known "
        "(Kadkhodaie et al. 2024, §4): does the network's Jacobian find the optimal basis?"
    )
    if "calpha" in summary:
        _calpha_section(rep, config, analyses, summary["calpha"])
    for key, dim, what in (("disks", 5, "disk manifold (centre, radius, two intensities)"),
                           ("ray", 1, "ray (one image under positive rescalings)")):
        if key in summary:
            _manifold_section(rep, key, dim, what, analyses[key], summary[key])
    if "gaussian" in summary:
        _gaussian_section(rep, analyses["gaussian"], summary["gaussian"])
    rep.heading("Configuration")
    rep.code(json.dumps(to_dict(config), indent=2))
    return rep.save()


def _calpha_section(rep: Report, config, analyses: dict, rows: list) -> None:
    rep.heading("C^α images: PSNR slope vs α/(α+1)")
    linear = all(r.get("linear_slope") is not None for r in rows)
    rep.table(["α", "fitted slope", "optimal α/(α+1)"] + (["best linear denoiser"] * linear),
              [[r["alpha"], r["slope"], r["optimal_slope"]] + ([r["linear_slope"]] * linear)
               for r in rows])
    per_alpha = [a for k, a in analyses.items() if k.startswith("calpha_a")]
    rep.figure(psnr_slopes(per_alpha), "calpha_psnr",
               f"Output vs input PSNR on held-out C^α images ({config.size}×{config.size}); "
               f"solid: least-squares line over {config.fit_range[0]:g}–"
               f"{config.fit_range[1]:g} dB; dotted: the optimal slope α/(α+1) through the "
               "same midpoint; thin: the best linear denoiser (the class's Wiener filter) "
               "on the same noisy images.")


def _manifold_section(rep: Report, key: str, dim: int, what: str, a: dict, rows: list) -> None:
    rep.heading(f"{key.capitalize()}: top-{dim} eigenvectors vs the tangent space")
    rep.paragraph(
        f"The {what} has dimension {dim}: the optimal denoiser projects the noise on its "
        f"tangent space, MSE ≈ {dim}σ² (summed over d = {a['d']} pixels) and "
        f"tr J ≈ {dim}. Angles are principal angles between the span of the top {dim} "
        "Jacobian eigenvectors at a noisy image and the tangent space at the clean image, "
        "averaged over images; a random subspace gives the baseline."
    )
    rep.table(["σ", "mean angles (deg)", "random subspace (deg)", "tr J",
               f"MSE / σ² (optimum ≈ {dim})"],
              [[r["sigma"], ", ".join(f"{v:.1f}" for v in r["mean_angles_deg"]),
                ", ".join(f"{v:.1f}" for v in r["random_mean_angles_deg"]), r["trace"],
                r["mse_over_sigma2"]] for r in rows])
    rep.figure(tangent_angles(rows, key), f"{key}_angles")
    grid = [("image", [a["example"]], None), ("tangent", a["example_tangent"], None)]
    grid += [(f"σ = {s}", e["vectors"], e["eigenvalues"]) for s, e in a["eigenvectors"].items()]
    rep.figure(eigenvector_grid(grid), f"{key}_eigenvectors",
               "A clean image, its tangent vectors (finite differences along each "
               "parameter), and the top Jacobian eigenvectors of the network at each σ.")


def _gaussian_section(rep: Report, g: dict, rows: list) -> None:
    rep.heading("Gaussian: Jacobian vs Σ(Σ + σ²I)⁻¹")
    rep.paragraph(
        "For a Gaussian the optimal denoiser is linear with Jacobian Σ(Σ + σ²I)⁻¹, whose "
        "eigenvectors are the covariance's (Fourier modes for this stationary one) with "
        "eigenvalues λ/(λ + σ²). Angles: the largest principal angle between the top-k "
        "eigenspaces of the network's J and of Σ, at the k where Σ's spectrum has a gap "
        "(repeated eigenvalues make other k ill-defined). The exact GaussianDenoiser "
        "gives the optimum column."
    )
    rep.table(["σ", "‖J − W_G‖/‖W_G‖", "diagonality in Σ's basis",
               "top-k overlap (mean cos²)", "max angle per k (deg)",
               "optimum max angle (deg)", "tr J", "optimal tr J"],
              [[r["sigma"], r["rel_error"], r["diagonality"],
                ", ".join(f"k={k}: {v:.2f}" for k, v in r["overlap"].items()),
                ", ".join(f"k={k}: {v:.1f}" for k, v in r["max_angle_deg"].items()),
                r["optimum_max_angle_deg"], r["trace"], r["optimal_trace"]]
               for r in rows])
    rep.figure(shrinkage_curves(g["per_sigma"]), "gaussian_shrinkage",
               "Solid: the factor u_iᵀ J u_i the network applies along each covariance "
               "eigenvector u_i (mean over images); dashed: the optimum λ_i/(λ_i + σ²). "
               "Diagonality is the share of ‖Uᵀ(J − (tr J/d)I)U‖² on its diagonal (1: J "
               "shrinks along Σ's eigenvectors without mixing them).")
    rep.figure(spectra_vs_sigma({
        p["sigma"]: _mean_spectrum(p["network"]["eigenvalues"]) for p in g["per_sigma"]},
        title="network"), "gaussian_spectra",
        "Top eigenvalues of the network's Jacobian per σ (optimal: λ/(λ + σ²)).")
    grid = [("covariance", g["covariance_eigenvectors"], g["covariance_eigenvalues"])]
    grid += [(f"network σ = {s}", e["vectors"], e["eigenvalues"])
             for s, e in g["eigenvectors"].items()]
    rep.figure(eigenvector_grid(grid), "gaussian_eigenvectors",
               "Top covariance eigenvectors (titles: variances) and the network's top "
               "Jacobian eigenvectors (titles: eigenvalues); equal up to rotations within "
               "eigenspaces of repeated eigenvalues.")


def sweep_section(rep: Report, per_n: dict) -> None:
    """The sweep report's Jacobian section: per-N spectra and the two models' GAHB.

    per_n: {N: result of the sweep's Jacobian step} (``pydiffgen.experiments
    .generalization``): {"sigmas", "A"/"B": {"eigenvalues" {σ: [n]}, "trace" {σ: float},
    "eigenvectors" {σ: [k, C, H, W]}}, "agreement" {σ: float}, "image": [C, H, W]}.
    """
    ns = sorted(per_n, key=int)
    first = per_n[ns[0]]
    rep.heading("Adaptive harmonic bases (Jacobian eigenvectors)")
    rep.paragraph(
        "Eigendecomposition of each model's Jacobian at held-out images (in neither training "
        "set) plus noise (Kadkhodaie et al. 2024, §3): eigenvalues are the shrinkage "
        "factors, their sum the effective dimension, eigenvectors the adaptive basis. "
        "Generalizing models trained on different images share their basis: the agreement "
        "is the mean squared cosine of the principal angles between the top eigenspaces of "
        "models A and B (1: the same subspace)."
    )
    sig = [f"{s:g}" for s in first["sigmas"]]
    rep.table(["N"] + [f"tr J at σ={s}" for s in sig] + [f"A–B agreement σ={s}" for s in sig],
              [[n] + [per_n[n]["A"]["trace"][s] for s in sig]
               + [per_n[n]["agreement"][s] for s in sig] for n in ns])
    rep.figure(spectra_vs_n({n: per_n[n]["A"]["eigenvalues"] for n in ns}),
               "jacobian_spectra_vs_n",
               "Eigenvalue spectra of model A's Jacobian per N, at each σ (averaged over images).")
    rep.figure(effective_dimension({
        f"N = {n}": (per_n[n]["sigmas"], [per_n[n]["A"]["trace"][s] for s in sig]) for n in ns}),
        "jacobian_effective_dimension", "Effective dimension tr J of model A against σ, per N.")
    s_low = sig[0]  # the smallest σ, where the README quotes the A–B agreement
    rows = [("image", [first["image"]], None)]
    for n in ns:
        for m in ("A", "B"):
            rows.append((f"N = {n} {m}", per_n[n][m]["eigenvectors"][s_low],
                         per_n[n][m]["eigenvalues"][s_low][: len(per_n[n][m]["eigenvectors"]
                                                                  [s_low])]))
    rep.figure(eigenvector_grid(rows), "jacobian_eigenvectors",
               f"Top Jacobian eigenvectors of both models per N at σ = {s_low} (the σ of the "
               f"first agreement column above) for the first held-out image; titles: "
               "eigenvalues; each eigenvector scaled to its largest |value| (white +, black −, "
               "the sign is arbitrary). Memorizing models keep directions of their own "
               "training images, generalizing ones share an adaptive basis.")


def _mean(values) -> float:
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def _mean_spectrum(rows) -> list:
    return np.mean(np.asarray(rows, dtype=np.float64), axis=0).tolist()
