"""The HTML report of a generalization sweep: verdicts first, then the evidence."""

from __future__ import annotations

import json
from pathlib import Path

from . import figures
from .html import Report

_GRID_COLUMNS = 16  # samples per grid: 16 fit the page width with their cosines
# below this lead of the paired median over the closer of the nearest-training median and
# the S1–S2 baseline, or when the lead's 95% interval reaches zero, the largest N
# is reported as weak evidence, not as a clear verdict
WEAK_MARGIN = 0.02


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
        + (f"; lead of the two models' agreement over the closer control: {lead_text(s)}"
           if s.get("lead") else "")
        + (f"; which model made a sample is identifiable from its training set with "
           f"I ≥ {s['identification_bits']:.2f} of 1 bit." if s.get("identification_bits")
           is not None else ".")
    )


def lead_text(s: dict) -> str:
    """The lead with its interval and the share of samples above their nearest image."""
    lead = s["lead"]
    return (f"{lead['lead']:+.3f} (95% CI {lead['low']:+.3f} to {lead['high']:+.3f}), "
            f"{100 * lead['paired_above_nearest']:.0f}% of samples nearer their twin than "
            "their nearest training image")


def headline(summaries: dict) -> str:
    """One sentence: where the transition lies, from the verdicts per N ({N: summary}),
    and whether the largest N's evidence is weak."""
    ns = sorted(summaries)
    mem = [n for n in ns if summaries[n]["verdict"] == "memorizing"]
    gen = [n for n in ns if summaries[n]["verdict"] == "generalizing"]
    if mem and gen:
        where = (f"the models memorize up to N = {max(mem)} and generalize from N = "
                 f"{min(gen)}: the transition lies between them")
    elif mem:
        where = f"the models memorize up to N = {max(mem)}; no size here generalizes"
    elif gen:
        where = f"the models generalize from N = {min(gen)}; no size here memorizes"
    else:
        where = "no size here is clearly memorizing or generalizing"
    top = summaries[ns[-1]]
    margin = top["paired_median"] - max(top["nearest_median"], top["baseline_median"])
    lead = top.get("lead")  # with its interval (absent in hand-made summaries)
    ci = (f" (95% CI {lead['low']:+.3f} to {lead['high']:+.3f})" if lead else "")
    share = (f"; {100 * lead['paired_above_nearest']:.0f}% of the samples are closer to the "
             "other model's sample than to any of their own training images" if lead else "")
    if margin < WEAK_MARGIN or (lead and lead["low"] <= 0):
        lead_text = (f"only {margin:.3f} more than" if margin > 0 else
                     f"no more than ({margin:+.3f})")
        return (f"Weak evidence: {where}, but at the largest N = {ns[-1]} the two models' "
                f"samples agree (median cosine {top['paired_median']:.3f}) {lead_text} the "
                f"closer of the nearest-training median ({top['nearest_median']:.3f}) and the "
                f"S1–S2 baseline ({top['baseline_median']:.3f}){ci}{share}; a clear result "
                f"needs a lead of {WEAK_MARGIN} or more whose 95% interval excludes zero.")
    return (f"{where[0].upper()}{where[1:]}. At the largest N = {ns[-1]} the two models' "
            f"samples agree (median cosine {top['paired_median']:.3f}) {margin:.3f} more than "
            f"the closer of the nearest-training median ({top['nearest_median']:.3f}) and the "
            f"S1–S2 baseline ({top['baseline_median']:.3f}){ci}{share}.")


def sweep_report(out: Path, config, per_n: dict, metrics: dict, about: dict | None = None
                 ) -> Path:
    """report.html of a sweep: verdicts per N, similarity histograms and curves, samples,
    PSNR curves and, where the run has them, the Gaussian, Jacobian and feature-space
    sections. ``about``: the run's metadata (version, git, date, machine, threads, stage
    seconds) if recorded."""
    from ..config import to_dict

    out = Path(out)
    ns = sorted(per_n)
    summaries = {n: metrics["sizes"][str(n)] for n in ns}
    rep = Report(f"Memorization → generalization: {config.name}", out)
    rep.paragraph(headline(summaries), css_class="headline")
    _verdicts(rep, config, ns, metrics)
    _similarities(rep, ns, per_n, summaries)
    _samples(rep, out, ns, per_n)
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
    if all(per_n[n].get("per_class") for n in ns):  # class-conditional sweeps
        _per_class_section(rep, ns, per_n)
    if all(per_n[n].get("features") for n in ns):  # runs before this section lack it
        from .sweep_features import sweep_feature_section

        sweep_feature_section(rep, {n: per_n[n]["features"] for n in ns})
    if all(per_n[n].get("closed_form") for n in ns):  # runs before this section lack it
        from .sweep_closed_form import sweep_closed_form_section

        sweep_closed_form_section(rep, {n: per_n[n]["closed_form"] for n in ns})
    _about(rep, about or {}, metrics.get("seconds"))
    rep.heading("Configuration")
    rep.code(json.dumps(to_dict(config), indent=2))
    return rep.save()


def _per_class_section(rep: Report, ns: list, per_n: dict) -> None:
    """Class-conditional pairs: per class and N, the memorized fraction and the two models'
    paired median (both sample each class from the same noise)."""
    rep.heading("Memorization per class")
    classes = sorted(per_n[ns[0]]["per_class"], key=int)
    rep.paragraph("Both models sample every class equally often, from the same seeds. Per "
                  "class: the share of both models' samples that copy a training image "
                  "(NN1/NN2 < 1/3), and in brackets the median cosine of the two models' "
                  "samples. A class still memorized at an N where others generalize is one "
                  "the models have seen too few distinct images of.")

    def cell(c: dict) -> str:
        mem = "n/a" if c["memorized"] is None else f"{100 * c['memorized']:.0f}%"
        return f"{mem} ({c['paired_median']:.2f})"

    rep.table(["class", *(f"N = {n}" for n in ns)],
              [[k, *(cell(per_n[n]["per_class"][k]) for n in ns)] for k in classes])


def _about(rep: Report, about: dict, seconds: float | None) -> None:
    """The run's metadata: what made it, where, when, and how long each stage took."""
    rep.heading("Run")
    if not about:
        rep.paragraph("This run did not record its version, machine or times (made before "
                      "pydiffgen recorded them).")
        return
    git = f" (git {about['git']})" if about.get("git") else ""
    rows = [["pydiffgen", f"{about.get('version', '?')}{git}"],
            ["date", about.get("date", "?")], ["machine", about.get("machine", "?")],
            ["threads", f"{about.get('threads', '?')} of {about.get('cores', '?')} usable cores"]]
    if about.get("data_seconds") is not None:
        rows.append(["loading + de-duplicating the data", f"{about['data_seconds']:.1f} s"])
    for n, sec in sorted(about.get("size_seconds", {}).items()):
        rows.append([f"N = {n}: train A and B, sample, evaluate", f"{sec:.1f} s"])
    if seconds is not None:
        rows.append(["wall time of the last (re)run", f"{seconds:.1f} s"])
    rep.table(["", ""], rows)


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
         "lead [95% CI]", "paired > nearest", "memorized", "PSNR gap (dB)", "gen. score",
         "I(sample; set) ≥ (bits)"],
        [[n, s["verdict"], s["paired_median"], s["nearest_median"], s["baseline_median"],
          f"{s['lead']['lead']:+.3f} [{s['lead']['low']:+.3f}, {s['lead']['high']:+.3f}]",
          f"{100 * s['lead']['paired_above_nearest']:.0f}%",
          "n/a" if s["memorized_fraction"] is None else f"{100 * s['memorized_fraction']:.0f}%",
          s["psnr_gap_db"], s["generalization_score"],
          "n/a" if s.get("identification_bits") is None else s["identification_bits"]]
         for n, s in summaries.items()],
    )
    rep.paragraph(
        "Medians are cosine similarities. Lead: the paired median minus the larger of the "
        "nearest and S1–S2 medians, with its 95% interval (half-samples of the seeds and, "
        "independently, of the S1 images, without replacement); above zero throughout, "
        "the two models agree more than chance closeness "
        "of the data or copying would explain. Paired > nearest: the share of samples whose "
        "cosine to the other model's sample from the same seed exceeds their cosine to their "
        "nearest training image. Memorized: the share of samples whose nearest / "
        "second-nearest training distance is below 1/3. PSNR gap: denoising PSNR on the "
        "models' own training images minus on held-out images. Gen. score (Li, Dai & Qu "
        "2024): the mean distance of a sample to its nearest training image relative to "
        "the sample's norm, ‖x − NN(x)‖ / ‖x‖; near 0 the samples are training images, above "
        "about 0.6 the model generalizes. I(sample; set): a lower bound on the information "
        "a sample carries about which training set made it (1 bit: always identifiable).",
        css_class="note")


def _similarities(rep: Report, ns: list, per_n: dict, summaries: dict) -> None:
    rep.heading("Similarity histograms")
    rep.figure(
        figures.similarity_histograms({n: per_n[n] for n in ns}), "similarity_histograms",
        "Red: model A vs model B from the same initial and injected noise. Dark: each sample "
        "vs its nearest image in its own training set. Grey: each S1 image vs its closest "
        "S2 image. Memorization puts dark at 1; generalization puts red to the right of dark "
        "(and of grey). One x-range for every panel, fitted to the data; y: density.",
    )
    rep.heading("Median similarity vs training-set size")
    rep.figure(
        figures.median_curves(ns, [summaries[n]["paired_median"] for n in ns],
                              [summaries[n]["nearest_median"] for n in ns],
                              [summaries[n]["baseline_median"] for n in ns]),
        "median_similarity", "The phase transition: where the red curve (model A vs B) rises "
        "above the dark one (nearest training image).",
    )


def _samples(rep: Report, out: Path, ns: list, per_n: dict) -> None:
    from safetensors.torch import load_file

    rep.heading("Samples")
    for n in ns:
        s = load_file(str(out / f"n{n}" / "samples.safetensors"))
        m = len(s["A"])
        k = min(_GRID_COLUMNS, m)
        paired, nearest = per_n[n]["paired"], per_n[n]["nearest"]
        rows = [
            ("model A", s["A"][:k].numpy()),
            ("nearest in S1", s["nearest_A"][:k].numpy()),
            ("model B", s["B"][:k].numpy()),
            ("nearest in S2", s["nearest_B"][:k].numpy()),
        ]
        notes = [None, [f"{c:.2f}" for c in nearest[:k]],
                 [f"A·B {c:.2f}" for c in paired[:k]], [f"{c:.2f}" for c in nearest[m:m + k]]]
        rep.figure(figures.image_grid(rows, title=f"N = {n}", notes=notes), f"samples_n{n}",
                   f"N = {n}: the first {k} of {m} samples of each model, from the same seeds, "
                   "each above its nearest training image; numbers: the cosine of the image "
                   "above to its nearest training image, and (A·B) of the two models' samples.")


def _gaussian_section(rep: Report, ns: list, per_n: dict) -> None:
    from .gaussian import sweep_curves

    rep.heading("Gaussian structure")
    rep.figure(
        sweep_curves([("model A vs D_G of S1", {
            f"N = {n}": (per_n[n]["gaussian"]["sigma"], per_n[n]["gaussian"]["rmse"])
            for n in ns})]),
        "gaussian_rmse",
        "RMSE between model A and the Gaussian denoiser D_G of S1 (its training set's "
        "mean and covariance) on held-out noisy images, per N (Li, Dai & Qu 2024). At low σ "
        "every denoiser is close to the identity and at high σ to the mean, so the curves "
        "meet there; the distance peaks at intermediate σ, where the models differ most "
        "from D_G: the lower that peak, the more of the model is its training set's "
        "Gaussian structure.",
    )
