"""Run folders shared by every experiment: one config per folder, resumable."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from .. import config as cfgmod
from ..errors import ConfigError
from ..io import read_json, write_json


def claim_run_directory(out: Path, config, resume: bool, what: str = "run") -> None:
    """Write ``config.json`` into ``out``, or check that the one there is the same config.

    A folder belongs to one config: a rerun with it resumes (unless ``resume`` is False),
    any other config is refused rather than mixing results.
    """
    stored = Path(out) / "config.json"
    if stored.exists():
        if read_json(stored) != cfgmod.to_dict(config):
            raise ConfigError(
                f"{out} holds a {what} with a different config; use another --out or --name, "
                "or delete it"
            )
        if not resume:
            raise ConfigError(f"{out} already holds this {what}; rerun without --no-resume")
    write_json(stored, cfgmod.to_dict(config))


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` intra-op threads (None: leave the setting alone)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
