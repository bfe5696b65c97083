"""The training sets of a sweep's models, recorded so that a model can be analysed later.

A sweep trains model A of each N on S1 and model B on S2, two disjoint random subsets of
the de-duplicated dataset. ``n<N>/split.json`` records them: the indices of S1 and S2
into the de-duplicated images, and what rebuilds those images (dataset name and options,
de-duplication threshold, their count and a SHA-256 of their float32 bytes, so that a
changed dataset or de-duplication is refused instead of silently giving other images).
``pydiffgen closed-form --model runs/demo/n640/A`` finds the file beside the model and
takes A's training set and the held-out images: the de-duplicated images in neither set.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io import read_json, write_json

__all__ = ["SPLIT_FILE", "images_digest", "load_split", "record_split", "record_splits",
           "split_path"]

SPLIT_FILE = "split.json"
SUBSETS = {"A": "S1", "B": "S2"}  # the sweep's model folder -> its training set


def images_digest(x: torch.Tensor) -> str:
    """SHA-256 of the images' float32 bytes (C order): what identifies a de-duplicated set."""
    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy()
                          .tobytes()).hexdigest()


def record_split(folder, x: torch.Tensor, idx1: torch.Tensor, idx2: torch.Tensor, *,
                 dataset: str, dataset_options: dict, dedup_threshold: float | None,
                 seed: int) -> Path:
    """Write ``<folder>/split.json`` atomically: S1 = x[idx1] and S2 = x[idx2] of one N
    (x [K, *F]: the de-duplicated images; idx int [N] each) and how x is rebuilt."""
    path = Path(folder) / SPLIT_FILE
    write_json(path, {  # no indent: the two index lists stay one line each
        "dataset": dataset, "dataset_options": dict(dataset_options),
        "dedup_threshold": dedup_threshold, "images": len(x), "sha256": images_digest(x),
        "seed": seed, "S1": idx1.tolist(), "S2": idx2.tolist()}, indent=None)
    return path


def record_splits(out, config, x: torch.Tensor, split) -> None:
    """``n<N>/split.json`` for every N of the sweep ``config`` that lacks it; ``split(n)``
    gives (idx1, idx2), the sweep's S1 and S2 of size n as indices into x [K, *F]."""
    for n in config.sizes:
        folder = Path(out) / f"n{n}"
        if not (folder / SPLIT_FILE).exists():
            record_split(folder, x, *split(n), dataset=config.dataset,
                         dataset_options=dict(config.dataset_options),
                         dedup_threshold=config.dedup_threshold, seed=config.seed)


def split_path(model) -> tuple[Path, str] | None:
    """``(n<N>/split.json, "S1" or "S2")`` for a sweep model's checkpoint or folder
    (``runs/demo/n640/A``, ``.../A/model.json``), or None when it is no sweep model or
    its sweep recorded no split."""
    p = Path(model)
    folder = p if p.is_dir() else p.parent
    path = folder.parent / SPLIT_FILE
    if folder.name not in SUBSETS or not path.exists():
        return None
    return path, SUBSETS[folder.name]


def load_split(path, subset: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(train [N, *F], heldout [K − 2N, *F], about)`` of the split file ``path``:
    ``subset`` ("S1" or "S2") and the de-duplicated images in neither set (data order),
    rebuilt from the dataset and checked against the recorded digest."""
    from ..data import deduplicate, load

    s = read_json(path)
    x = load(s["dataset"], **s["dataset_options"])
    if s["dedup_threshold"] is not None:
        x = deduplicate(x, threshold=s["dedup_threshold"])
    if len(x) != s["images"] or images_digest(x) != s["sha256"]:
        raise ConfigError(f"{path}: {s['dataset']} de-duplicated at {s['dedup_threshold']} "
                          f"is no longer the {s['images']} images the sweep trained on (now "
                          f"{len(x)}, digest differs); pass --train FILE instead")
    used = torch.zeros(len(x), dtype=torch.bool)
    used[s["S1"]] = True
    used[s["S2"]] = True
    about = {"source": str(path), "subset": subset, "dataset": s["dataset"],
             "dataset_options": s["dataset_options"], "deduplicated": len(x)}
    return x[torch.tensor(s[subset])], x[~used], about
