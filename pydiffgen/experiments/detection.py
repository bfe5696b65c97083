"""Which prompts or classes does a conditional model memorize? (``pydiffgen audit --model
DIR --prompts FILE | --classes LIST``; docs/science.md, memorization detectors.)

Two detectors per condition c, ranked:

- Wen et al. (ICLR 2024), needs no training data: the magnitude of the text-/class-
  conditional part of the noise prediction, ‖ε(x_t, c) − ε(x_t, ∅)‖, over the first
  sampling steps and several seeds (:func:`pydiffgen.analysis.wen_score`); with text, the
  per-token attribution of that magnitude.
- With a training set: n samples per condition searched against it (pixels, or an
  encoder's features) and the copies counted (:func:`pydiffgen.analysis.copy_detection`).

Given user labels (1: memorized, 0: not), each detector's ROC AUC. Every score goes to
``detect.json``; ``report.html`` ranks the conditions and shows each flagged condition's
samples beside their nearest training images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..io import write_json

__all__ = ["conditions", "condition_audit", "read_labels", "write_detect_report"]

SHOWN = 8  # samples per flagged condition in the report


def conditions(model, *, prompts=None, classes=None) -> tuple[object, list[str]]:
    """(cond, names) for ``model``: ``classes`` (ints) as int64 labels [K], ``prompts``
    (strings) through the model's own text encoder ([K, L, E] embeddings)."""
    if (prompts is None) == (classes is None):
        raise InputError("pass exactly one of prompts and classes")
    if not getattr(model, "conditional", False):
        raise InputError(f"the model ({type(model).__name__}) is unconditional: it takes no "
                         "prompts or classes")
    if classes is not None:
        if not classes:
            raise InputError("classes is empty; give at least one class index")
        return torch.tensor([int(c) for c in classes], dtype=torch.long), \
            [f"class {c}" for c in classes]
    if not prompts:
        raise InputError("prompts is empty; give at least one prompt (one per line)")
    if not hasattr(model, "embed_prompts"):
        raise InputError(f"the model ({type(model).__name__}) has no text encoder; it takes "
                         "--classes, not --prompts")
    return model.embed_prompts(list(prompts)), list(prompts)


def read_labels(path, k: int) -> torch.Tensor:
    """0/1 labels [k], one per line of ``path`` (1: known memorized), in condition order."""
    lines = [s.strip() for s in Path(path).read_text().splitlines() if s.strip()]
    if len(lines) != k or any(s not in ("0", "1") for s in lines):
        raise InputError(f"--labels {path} must hold {k} lines of 0 or 1 (one per condition), "
                         f"got {len(lines)} lines")
    return torch.tensor([int(s) for s in lines])


def condition_audit(model, cond, names: list[str], *, train=None, guidance=None,
                    encoder=None, labels=None, n: int = 16, seed: int = 0, steps: int = 3,
                    seeds=(0, 1, 2, 3), wen_sigma_max: float | None = None, device="cpu",
                    **sample_kw) -> dict:
    """Both detectors on every condition; returns the JSON-able result (``detect.json``)
    and, under ``"samples"``, the tensors the report shows. ``wen_sigma_max``: where Wen
    et al.'s sampling path starts (default: the model's own σ_max, else 80); the first
    ``steps`` of a 50-step Karras schedule from there are measured."""
    from ..analysis import copy_detection, detector_auc, wen_score
    from ..diffusion.noise import karras_sigmas

    shape = tuple(getattr(model, "meta", {}).get("data_shape") or train.shape[1:])
    top = wen_sigma_max or getattr(model, "sigma_max", 80.0)
    sigmas = karras_sigmas(50, sigma_min=getattr(model, "sigma_min", 0.002), sigma_max=top)
    wen = wen_score(model, cond, shape=shape, steps=steps, seeds=seeds, sigmas=sigmas,
                    guidance=guidance, device=device)
    rows = [{"condition": name, "wen_score": float(wen.score[i]),
             **({"tokens": wen.tokens[i].tolist()} if wen.tokens is not None else {})}
            for i, name in enumerate(names)]
    result = {"guidance": guidance, "n": n, "seed": seed, "wen_steps": steps,
              "wen_sigma_max": float(top),
              "wen_seeds": list(seeds), "conditions": rows,
              "ranking": {"wen": [names[i] for i in wen.ranking]}}
    if train is not None:
        copies = copy_detection(model, cond, train.to(device), n=n, guidance=guidance,
                                seed=seed, shape=shape, encoder=encoder, device=device,
                                **sample_kw)
        for i, row in enumerate(rows):
            r = copies.reports[i]
            row.update(copies=int(copies.copies[i]), copy_fraction=float(copies.fraction[i]),
                       nearest_index=r.nn_index.tolist(), ratio=r.ratio.tolist())
        result["ranking"]["copies"] = [names[i] for i in copies.ranking]
        result["samples"] = copies.samples.cpu()
    if labels is not None:
        result["labels"] = labels.tolist()
        result["auc"] = {"wen": detector_auc(wen.score, labels)}
        if train is not None:
            result["auc"]["copies"] = detector_auc(copies.fraction, labels)
    return result


def write_detect_report(result: dict, train, out_dir) -> Path:
    """``detect.json`` (every score) and ``report.html``: conditions ranked by Wen's score,
    flagged ones (a copy among their samples) with samples beside nearest training images."""
    from ..report.figures import image_grid
    from ..report.html import Report

    out = Path(out_dir)
    samples = result.pop("samples", None)
    write_json(out / "detect.json", result)
    rows = sorted(result["conditions"], key=lambda r: -r["wen_score"])
    rep = Report("Memorization detectors per condition", out)
    rep.paragraph(
        "Wen et al.'s score: the magnitude of the conditional part of the noise prediction, "
        f"‖ε(x_t, c) − ε(x_t, ∅)‖, over the first {result['wen_steps']} sampling steps and "
        f"{len(result['wen_seeds'])} seeds (higher: more likely memorized). Copies: of "
        f"{result['n']} samples per condition, those whose nearest training image is under "
        "1/3 of the distance to the second nearest.")
    if "auc" in result:
        rep.paragraph("ROC AUC against the given labels: " + ", ".join(
            f"{k} {v:.3f}" for k, v in result["auc"].items()), "verdict")
    has_copies = "copies" in rows[0]
    rep.table(["rank", "condition", "Wen score", *(["copies"] if has_copies else [])],
              [[i + 1, r["condition"], r["wen_score"],
                *([f"{r['copies']}/{result['n']}"] if has_copies else [])]
               for i, r in enumerate(rows)])
    if samples is not None:
        names = [r["condition"] for r in result["conditions"]]
        for r in rows:
            if not r["copies"]:
                continue
            k = names.index(r["condition"])
            x = samples[k][:SHOWN]
            nn = train[torch.tensor(r["nearest_index"][:SHOWN])]
            rep.figure(image_grid([("samples", x.numpy()), ("nearest training", nn.numpy())],
                                  title=r["condition"]),
                       f"flagged_{k}", f"{r['condition']}: {r['copies']} of {result['n']} "
                       "samples are copies (top), beside their nearest training images.")
    return rep.save()
