"""Saving and loading denoisers: safetensors weights + a JSON description, never pickle.

A saved model is two files side by side, ``<prefix>.safetensors`` (the ``state_dict``)
and ``<prefix>.json`` (the model's ``config``, which ``pydiffgen.models.build`` turns back
into the architecture, plus free-form ``meta``). Both are written atomically
(``pydiffgen.io.atomic_path``); the pair shares a random token (stored in the safetensors
metadata and in the JSON), so a pair torn by a crash between the two writes is detected
on load instead of silently mixing two versions.

Where the files go (``save_model``) or come from (``load_model``), for ``path``:
- an existing directory (or a path ending in a separator): ``path/model.{safetensors,json}``;
- a path ending in ``.safetensors`` or ``.json``: that file and its sibling;
- anything else is a prefix: ``path.safetensors`` and ``path.json``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError, InputError
from .io import atomic_path, read_json, write_json

__all__ = ["save_model", "load_model", "model_paths"]

MODEL_FORMAT = "pydiffgen.model"
FORMAT_VERSION = 1


def model_paths(path) -> tuple[Path, Path]:
    """``(weights.safetensors, description.json)`` for ``path`` (rules in the module docstring)."""
    s = os.fspath(path)
    p = Path(s)
    if p.is_dir() or s.endswith(("/", os.sep)):
        prefix = p / "model"
    elif p.suffix in (".safetensors", ".json"):
        prefix = p.with_suffix("")
    else:
        prefix = p
    return prefix.with_name(prefix.name + ".safetensors"), prefix.with_name(prefix.name + ".json")


def save_model(path, model: torch.nn.Module, meta: dict | None = None) -> Path:
    """Save a ``pydiffgen.models.Denoiser`` as safetensors + JSON; returns the weights path.

    ``meta`` (JSON-able) is stored as is, e.g. the training config and step.
    """
    config = getattr(model, "config", None)
    if not isinstance(model, torch.nn.Module) or not isinstance(config, dict) or not config.get(
        "name"
    ):
        raise InputError(
            "save_model needs a pydiffgen Denoiser (a module with a .config dict naming a "
            f"registered model), got {type(model).__name__}"
        )
    weights, desc = model_paths(path)
    token = secrets.token_hex(8)
    write_tensors(weights, state_tensors(model), token=token)
    write_json(
        desc,
        {
            "format": MODEL_FORMAT,
            "version": FORMAT_VERSION,
            "token": token,
            "config": config,
            "n_params": sum(p.numel() for p in model.parameters()),
            "torch_version": torch.__version__,
            "meta": meta,
        },
    )
    return weights


def load_model(path, *, device="cpu") -> torch.nn.Module:
    """Rebuild a model saved by ``save_model`` (or at the end of ``train``), in eval mode.

    The architecture comes from the JSON config via ``pydiffgen.models.build``; weights
    from safetensors (no pickle, no ``torch.load``). Missing, corrupt or mismatched files
    raise ``CheckpointError`` naming the file.
    """
    from .models.base import build

    weights, desc = model_paths(path)
    info = read_json(desc)
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        hint = ""
        if isinstance(info, dict) and info.get("format") == "pydiffgen.train_checkpoint":
            hint = " (it is a training checkpoint; load the model.json written next to it)"
        raise CheckpointError(f"{desc} is not a pydiffgen model description{hint}")
    config = info.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise CheckpointError(f"{desc} has no model config (expected a dict with a 'name')")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    try:
        model = build(config["name"], **kwargs)
    except ConfigError as err:
        raise CheckpointError(f"{desc}: cannot rebuild the model: {err}") from None
    tensors = read_tensors(weights, token=info.get("token"), token_source=desc)
    load_state_tensors(model, tensors, source=weights)
    model.meta = info.get("meta") or {}  # e.g. data_shape and train_config from train()
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------
# helpers shared with pydiffgen.training
# ----------------------------------------------------------------------------------------


def state_tensors(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """``module.state_dict()`` as independent contiguous CPU tensors, keys prefixed."""
    return {
        prefix + k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in module.state_dict().items()
    }


def load_state_tensors(module: torch.nn.Module, tensors: dict, *, source) -> None:
    """``module.load_state_dict(tensors, strict=True)`` with a CheckpointError naming ``source``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or extra or wrong:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise CheckpointError(
            f"{source} does not match the model ({'; '.join(parts)}); was it saved from a "
            "different architecture?"
        )
    module.load_state_dict(tensors, strict=True)


def write_tensors(path, tensors: dict[str, torch.Tensor], *, token: str) -> None:
    """Atomic safetensors ``save_file`` with ``token`` in the header metadata."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pydiffgen", "token": token})


def read_tensors(path, *, token=None, token_source=None, device="cpu") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; CheckpointError if missing, corrupt or torn.

    With ``token``: the file's metadata token must equal it (the JSON written alongside,
    ``token_source``, holds the same token when both come from one save).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception as err:  # safetensors raises its own error types, or OSError
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "delete it and save or train again"
        ) from None
    if token is not None and meta.get("token") != token:
        raise CheckpointError(
            f"{path} and {token_source} come from different saves (a write was interrupted "
            "between them); delete both and save or train again"
        )
    return tensors


def _json_normal(obj):
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))
