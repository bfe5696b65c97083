"""The HTML report of a generalization sweep: verdicts first, then the evidence."""

from __future__ import annotations

import json
from pathlib import Path

from . import figures
from .html import Report

_GRID_COLUMNS = 10


def verdict_sentence(n: int, s: dict) -> str:
    mem = s["memorized_fraction"]
    mem_text = "n/a (N = 1)" if mem is None else f"{100 * mem:.0f}%"
    head = {
        "memorizing": "memorizing: samples are copies of training images",
        "generalizing": "generalizing: the two models generate nearly the same images, "
        "farther from their training sets than from each other",
        "transition": "in transition between memorization and generalization",
    }[s["verdict"]]
    return (
        f"N = {n}: {head}. Median similarity of the two models' samples (same seed): "
        f"{s['paired_median']:.3f}; of each sample to its nearest training image: "
        f"{s['nearest_median']:.3f} (closest S1–S2 training pairs: {s['baseline_median']:.3f}); "
        f"memorized samples (nearest/second-nearest distance < 1/3): {mem_text}; "
        f"train − test denoising PSNR gap: {s['psnr_gap_db']:.2f} dB"
        + (f"; which model made a sample is identifiable from its training set with "
           f"I ≥ {s['identification_bits']:.2f} of 1 bit." if s.get("identification_bits")
           is not None else ".")
    )


def sweep_report(out: Path, config, per_n: dict, metrics: dict) -> Path:
    """report.html of a sweep: verdicts per N, similarity histograms and curves, samples,
    PSNR curves and, where the run has them, the Gaussian and Jacobian sections."""
    from ..config import to_dict

    out = Path(out)
    ns = sorted(per_n)
    rep = Report(f"Memorization → generalization: {config.name}", out)
    _verdicts(rep, config, ns, metrics)
    _similarities(rep, ns, per_n, {n: metrics["sizes"][str(n)] for n in ns})
    _samples(rep, out, ns)
    rep.heading("Denoising PSNR: training vs held-out images")
    rep.figure(
        figures.psnr_curves({n: per_n[n]["psnr"] for n in ns}), "psnr_curves",
        "Output vs input PSNR, averaged over both models; solid: their own training images, "
        "dashed: the other subset (held out). The gap closes as the models generalize.",
    )
    if all(per_n[n].get("gaussian") for n in ns):  # runs before this section lack it
        _gaussian_section(rep, ns, per_n)
    if all(per_n[n].get("jacobian") for n in ns):  # optional step (jacobian_images > 0)
        from .jacobian import sweep_section

        sweep_section(rep, {n: per_n[n]["jacobian"] for n in ns})
    rep.heading("Configuration")
    rep.code(json.dumps(to_dict(config), indent=2))
    return rep.save()


def _verdicts(rep: Report, config, ns: list, metrics: dict) -> None:
    summaries = {n: metrics["sizes"][str(n)] for n in ns}
    d = metrics["dataset"]
    rep.paragraph(
        f"{config.dataset}: {d['raw']} images, {d['deduplicated']} after de-duplication, "
        f"shape {d['shape']}. Two {config.model} denoisers per N, trained on disjoint "
        f"subsets S1 and S2 and sampled from the same seeds ({config.sampler} sampler). "
        f"Similarities are cosines{' of mean-removed images' if config.center else ''}."
    )
    for n in ns:
        rep.paragraph(verdict_sentence(n, summaries[n]), css_class="verdict")
    rep.table(
        ["N", "verdict", "paired median", "nearest median", "S1–S2 baseline",
         "memorized", "PSNR gap (dB)", "gen. score", "I(sample; set) ≥ (bits)"],
        [[n, s["verdict"], s["paired_median"], s["nearest_median"], s["baseline_median"],
          "n/a" if s["memorized_fraction"] is None else s["memorized_fraction"],
          s["psnr_gap_db"], s["generalization_score"],
          "n/a" if s.get("identification_bits") is None else s["identification_bits"]]
         for n, s in summaries.items()],
    )


def _similarities(rep: Report, ns: list, per_n: dict, summaries: dict) -> None:
    rep.heading("Similarity histograms")
    rep.figure(
        figures.similarity_histograms({n: per_n[n] for n in ns}), "similarity_histograms",
        "Red: model A vs model B from the same initial and injected noise. Dark: each sample "
        "vs its nearest image in its own training set. Grey: each S1 image vs its closest "
        "S2 image. Memorization puts dark at 1; generalization puts red above dark.",
    )
    rep.heading("Median similarity vs training-set size")
    rep.figure(
        figures.median_curves(ns, [summaries[n]["paired_median"] for n in ns],
                              [summaries[n]["nearest_median"] for n in ns],
                              [summaries[n]["baseline_median"] for n in ns]),
        "median_similarity", "The phase transition: where the red curve crosses the dark one.",
    )


def _samples(rep: Report, out: Path, ns: list) -> None:
    from safetensors.torch import load_file

    rep.heading("Samples")
    for n in ns:
        s = load_file(str(out / f"n{n}" / "samples.safetensors"))
        k = min(_GRID_COLUMNS, len(s["A"]))
        rows = [
            ("model A", s["A"][:k].numpy()),
            ("nearest in S1", s["nearest_A"][:k].numpy()),
            ("model B", s["B"][:k].numpy()),
            ("nearest in S2", s["nearest_B"][:k].numpy()),
        ]
        rep.figure(figures.image_grid(rows), f"samples_n{n}",
                   f"N = {n}: samples of both models from the same seeds, each above its "
                   "nearest training image.")


def _gaussian_section(rep: Report, ns: list, per_n: dict) -> None:
    from .gaussian import sweep_curves

    rep.heading("Gaussian structure")
    rep.figure(
        sweep_curves([("model A vs D_G of S1", {
            f"N = {n}": (per_n[n]["gaussian"]["sigma"], per_n[n]["gaussian"]["rmse"])
            for n in ns})]),
        "gaussian_rmse",
        "RMSE between model A and the Gaussian denoiser D_G of S1 (its training set's "
        "mean and covariance) on held-out noisy images, per N (Li, Dai & Qu 2024): a "
        "generalizing model is close to D_G at intermediate σ.",
    )
