"""The sweep's "which closed form explains the model" step: for each N, how well every
closed-form denoiser of S1 (empirical, Gaussian, blurred, smoothed, LS, ELS, PSPC)
predicts model A on held-out noisy images — the comparison of ``pydiffgen closed-form``
(:func:`.closed_form.compare`), at a few noise levels and images so that it costs the
demo seconds. Small N: the empirical optimum should explain the model; large N: the
Gaussian and the local patch models.

Each N's result is ``n<N>/closed_form.json``, written once (a rerun keeps it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import replace
from ..io import read_json
from .closed_form import ClosedFormConfig, closed_forms, compare, tabulate
from .training_sets import SPLIT_FILE

__all__ = ["RESULT_FILE", "SETTINGS", "attach_closed_form", "closed_form_sizes"]

RESULT_FILE = "closed_form.json"
# three noise levels (near the data, the transition, near the mean), 16 held-out images and
# two patch sizes: ≈ 6 CPU-seconds for the demo's four N (measured in the README)
SETTINGS = ClosedFormConfig(name="sweep", sigmas=(0.05, 0.2, 1.0), patch_sizes=(3, 5),
                            n_heldout=16, n_samples=0)


def closed_form_sizes(config, run, x: torch.Tensor, sizes) -> None:
    """``n<N>/closed_form.json`` for each N of ``sizes`` that lacks it: r² and RMSE of
    every closed form of S1 for model A (``n<N>/A``) at :data:`SETTINGS`' σ on held-out
    images (``SETTINGS.n_heldout`` of the images outside the largest N's S1 ∪ S2, the same
    for every N, noise fixed by the sweep's seed). x [K, C, H, W]: the sweep's de-duplicated
    images, indexed by each N's ``split.json``. A sweep whose models are no unconditional
    image denoisers, or that leaves no image out, stores why it was skipped."""
    from ..checkpoint import load_model
    from .jacobian_spectra import heldout_images

    largest = read_json(run.path / f"n{max(config.sizes)}" / SPLIT_FILE)
    held = heldout_images(x, torch.tensor(largest["S1"]), torch.tensor(largest["S2"]),
                          SETTINGS.n_heldout, config.seed)
    settings = replace(SETTINGS, seed=config.seed, device=config.device)
    for n in sizes:
        path = run.path / f"n{n}" / RESULT_FILE
        if path.exists():
            continue
        why = skipped(config, x, held)
        if why:
            run.write_json(f"n{n}/{RESULT_FILE}", {"skipped": why})
            continue
        run.log(f"N={n}: which closed form explains model A")
        train = x[torch.tensor(read_json(run.path / f"n{n}" / SPLIT_FILE)["S1"])]
        train, images = train.to(config.device), held.to(config.device)
        net = load_model(run.path / f"n{n}" / "A", device=config.device).eval()
        models = closed_forms(settings, train)
        per_sigma = [compare(settings, s, net, train, images, models) for s in settings.sigmas]
        run.write_json(f"n{n}/{RESULT_FILE}", {**tabulate(per_sigma), "held_out": len(held)})


def skipped(config, x: torch.Tensor, held) -> str | None:
    """Why the step does not apply to this sweep, or None."""
    if config.condition != "none":
        return "the closed forms are unconditional; the models are class-conditional"
    if x.ndim != 4 or config.model == "mlp":
        return "the patch models need image denoisers"
    if held is None:
        return "no image is left outside the largest S1 and S2"
    return None


def attach_closed_form(out: Path, per_n: dict, metrics: dict) -> None:
    """Each N's result into ``per_n[N]["closed_form"]`` and ``metrics["closed_form"]``
    (runs made before the step have no ``closed_form.json``: nothing is added)."""
    if not all((Path(out) / f"n{n}" / RESULT_FILE).exists() for n in per_n):
        return
    for n in per_n:
        per_n[n]["closed_form"] = read_json(Path(out) / f"n{n}" / RESULT_FILE)
    metrics["closed_form"] = {str(n): per_n[n]["closed_form"] for n in per_n}
