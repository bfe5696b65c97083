"""Where a saved diffusers model keeps its parts, and the checks made before reading them.

A *pipeline folder* holds ``model_index.json`` (or, saved by hand, just ``unet/`` or
``transformer/`` beside ``scheduler/``) with one subfolder per component; a *model folder*
holds the network's ``config.json`` and ``scheduler_config.json`` side by side. Weights are
read from safetensors only: pickle files (``.bin``, ``.pt``, ``.ckpt``) can run code when
loaded, so a folder holding only those is refused with the way to convert it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from ...errors import CheckpointError, ConfigError

NETWORK_FOLDERS = ("unet", "transformer")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class Layout:
    """The folders of one saved model: ``network`` holds the denoiser's ``config.json``;
    ``scheduler`` the scheduler config file; ``vae``, ``text_encoder``, ``tokenizer`` the
    optional components (None when absent)."""

    root: Path
    network: Path
    scheduler: Path
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None


def import_diffusers():
    """The diffusers module, or ConfigError saying how to install it."""
    try:
        import diffusers
    except ImportError:
        raise ConfigError("diffusers models need the optional dependency diffusers: "
                          "pip install 'pydiffgen[diffusers]'") from None
    return diffusers


@contextlib.contextmanager
def quiet(diffusers):
    """diffusers logs every config key a class does not use; say only errors meanwhile."""
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)


def read_config(file: Path) -> dict:
    """A component's JSON config; CheckpointError when missing or not a JSON object."""
    try:
        cfg = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{file}: cannot read the config ({err})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return cfg


def find_layout(path) -> Layout:
    """The :class:`Layout` of a pipeline or model folder; CheckpointError for anything else."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory holding a diffusers model")
    for name in NETWORK_FOLDERS:
        if (root / name / "config.json").is_file():
            optional = {part: root / part if (root / part).is_dir() else None
                        for part in ("vae", "text_encoder", "tokenizer")}
            return Layout(root, root / name, root / "scheduler" / "scheduler_config.json",
                          **optional)
    if (root / "config.json").is_file():
        return Layout(root, root, root / "scheduler_config.json")
    raise CheckpointError(
        f"{root} holds no diffusers UNet or transformer (expected unet/ or transformer/ "
        "beside scheduler/, or config.json + scheduler_config.json)")


def is_diffusers_dir(path) -> bool:
    """True when ``path`` looks like a diffusers pipeline or model folder."""
    try:
        find_layout(path)
    except CheckpointError:
        return False
    return True


def check_safetensors(folder: Path) -> None:
    """CheckpointError unless ``folder`` holds safetensors weights: one line saying how to
    convert pickle weights, or that the weights are missing (nothing is downloaded)."""
    if any(folder.glob("*.safetensors")):
        return
    if any(f.suffix in PICKLE_SUFFIXES for f in folder.iterdir()):
        raise CheckpointError(
            f"{folder}: cannot load pickle (.bin) weights, only safetensors; convert once "
            "with from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
    raise CheckpointError(f"{folder}: no weights here (nothing is downloaded); "
                          "save the model with save_pretrained first")
