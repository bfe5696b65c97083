"""The sweep report's "which closed form explains the model" section: for each N, r² of
every closed-form denoiser of S1 for model A against σ, so that the reader sees which
one the network computes — the empirical optimum (memorization) at small N, the Gaussian
and local patch models at large N."""

from __future__ import annotations

from .closed_form import STYLE
from .figures import finish_panels, panel_grid
from .html import Report


def r2_panels(per_n: dict):
    """One panel per N: r² of each closed form for model A against σ (log σ), one y-range
    for every panel so that they compare.

    per_n: {N: {"sigma": [S], "r2": {model: [S]}}}."""
    ns = sorted(per_n)
    lows = [v for n in ns for curve in per_n[n]["r2"].values() for v in curve]
    bottom = max(-0.5, min(lows) - 0.05)
    fig, panels = panel_grid(ns, 2.8, sharey=True)
    for n, ax in panels:
        r = per_n[n]
        for model, values in r["r2"].items():
            label, color, style = STYLE.get(model, (model, None, "-"))
            ax.plot(r["sigma"], values, style, marker="o", ms=3, color=color, label=label)
        ax.set_xscale("log")
        ax.set_ylim(bottom, 1.02)
    return finish_panels(fig, panels, "noise level σ", "r² for model A", ncol=4)


def sweep_closed_form_section(rep: Report, per_n: dict) -> None:
    """Heading, the r²-vs-σ panels and the best closed form per (N, σ).

    per_n: {N: ``n<N>/closed_form.json``}: {"sigma", "r2", "rmse", "patch_size", "best",
    "held_out"} (:func:`pydiffgen.experiments.closed_form.tabulate`), or {"skipped": why}."""
    rep.heading("Which closed form explains the model")
    done = {n: r for n, r in per_n.items() if "skipped" not in r}
    if not done:
        rep.paragraph(f"Not measured: {next(iter(per_n.values()))['skipped']}.", "note")
        return
    held = next(iter(done.values()))["held_out"]
    rep.figure(r2_panels(done), "closed_form_r2",
               f"For each N, how much of model A's output each closed-form denoiser of its "
               f"training set S1 explains: r² = 1 − ‖D_A − D‖² / ‖D_A − mean D_A‖² on "
               f"{held} held-out images (in no training set of the sweep) with the same fixed "
               "noise at each σ. Empirical: the exact optimum of S1, which reproduces training "
               "images; Gaussian: the optimum of S1's mean and covariance; blurred, smoothed: "
               "the empirical optimum softened; LS, ELS, PSPC: local patch models at the patch "
               "size that fits best. The highest curve at a σ is the closed form that best "
               "predicts the network there. A memorizing network is expected to follow the "
               "empirical optimum, a generalizing one the Gaussian or a local model; at small "
               "σ a held-out input stays near itself under a network but jumps to a training "
               "image under the empirical optimum, which lowers its r² there.")
    sigmas = next(iter(done.values()))["sigma"]
    rep.table(["N", *(f"best at σ = {s:g}" for s in sigmas)],
              [[n, *(f"{b} ({r['r2'][b][i]:.3f})" for i, b in enumerate(r["best"]))]
               for n, r in sorted(done.items())])
    rep.paragraph("`pydiffgen closed-form --model <run>/n<N>/A` gives the full comparison "
                  "for one model: more σ and held-out images, calibration, samples.", "note")
