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
from ._runs import torch_threads
from .closed_form import ClosedFormConfig, closed_forms, compare, tabulate
from .training_sets import SPLIT_FILE

__all__ = ["RESULT_FILE", "SETTINGS", "attach_closed_form", "closed_form_sizes"]

RESULT_FILE = "closed_form.json"
# three noise levels (near the data, the transition, near the mean), 12 held-out images and
# two patch sizes, on one thread (the patch models' many small products only contend with
# a second, 11x the CPU time on a busy 2-core machine): 8.2 CPU-seconds for the demo's four N
SETTINGS = ClosedFormConfig(name="sweep", sigmas=(0.05, 0.2, 1.0), patch_sizes=(3, 5),
                            n_heldout=12, n_samples=0, threads=1)


def closed_form_sizes(config, run, x: torch.Tensor, sizes) -> None:
    """``n<N>/closed_form.json`` for each N of ``sizes`` that lacks it: r² and RMSE of
    every closed form of S1 for model A (``n<N>/A``) at :data:`SETTINGS`' σ on held-out
    images (``SETTINGS.n_heldout`` of the images outside the largest N's S1 ∪ S2, the same
    for every N, noise fixed by the sweep's seed). x [K, C, H, W]: the sweep's de-duplicated
    images, indexed by each N's ``split.json``. A sweep whose models are no unconditional
    image denoisers, or that leaves no image out, stores why it was skipped."""
    from .jacobian_spectra import heldout_images

    todo = [n for n in sizes if not (run.path / f"n{n}" / RESULT_FILE).exists()]
    if not todo:
        return
    largest = read_json(run.path / f"n{max(config.sizes)}" / SPLIT_FILE)
    held = heldout_images(x, torch.tensor(largest["S1"]), torch.tensor(largest["S2"]),
                          SETTINGS.n_heldout, config.seed)
    why = skipped(config, x, held)
    settings = replace(SETTINGS, seed=config.seed, device=config.device)
    with torch_threads(settings.threads):
        for n in todo:
            run.write_json(f"n{n}/{RESULT_FILE}", {"skipped": why} if why else
                           _explain(config, run, x[_s1(run, n)], held, n, settings))


def _s1(run, n: int) -> torch.Tensor:
    return torch.tensor(read_json(run.path / f"n{n}" / SPLIT_FILE)["S1"])


def _explain(config, run, train: torch.Tensor, held: torch.Tensor, n: int,
             settings: ClosedFormConfig) -> dict:
    """The closed forms of ``train`` (S1 [N, C, H, W]) against model A of N = n on
    ``held`` [M, C, H, W]: :func:`.closed_form.tabulate`'s curves and ``held_out`` = M."""
    from ..checkpoint import load_model

    run.log(f"N={n}: which closed form explains model A")
    train, images = train.to(config.device), held.to(config.device)
    net = load_model(run.path / f"n{n}" / "A", device=config.device).eval()
    models = closed_forms(settings, train)
    per_sigma = [compare(settings, s, net, train, images, models) for s in settings.sigmas]
    return {**tabulate(per_sigma), "held_out": len(held)}


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
