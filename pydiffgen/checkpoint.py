"""Saving and loading denoisers: safetensors weights + a JSON description, never pickle.

A saved model is two files side by side, ``<prefix>.safetensors`` (the ``state_dict``)
and ``<prefix>.json`` (the model's ``config``, which ``pydiffgen.models.build`` turns back
into the architecture, plus free-form ``meta``). Both are written atomically
(``pydiffgen.io.atomic_path``), the safetensors first, and the safetensors header holds
the whole description too, so that file alone is one complete save: a process killed
between the two writes leaves the new weights beside the old JSON, and loading takes the
description from the weights (the pair shares a random token to tell). The previous save
stays intact until the new weights are complete. Files from before the description was
embedded are read as before; a torn pair of those is refused.

Where the files go (``save_model``) or come from (``load_model``), for ``path``:
- an existing directory (or a path ending in a separator): ``path/model.{safetensors,json}``;
- a path ending in ``.safetensors`` or ``.json``: that file and its sibling;
- anything else is a prefix: ``path.safetensors`` and ``path.json``.

A training checkpoint (``save_train_checkpoint`` / ``load_train_checkpoint``, written by
``pydiffgen.train``) is the same kind of pair, ``checkpoint.{safetensors,json}`` in the
run's directory: the tensors of the model, its EMA copy and Adam (``model/``, ``ema/``,
``optim/<param>/`` keys), and in the JSON the step, the configs, Adam's scalars and
param groups, the generator state and the loss of every step.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Collection
from pathlib import Path

import torch

from .errors import CheckpointError, ConfigError, InputError
from .io import atomic_path, jsonable, read_json, write_json

__all__ = ["save_model", "load_model", "model_paths", "save_train_checkpoint",
           "load_train_checkpoint", "train_checkpoint_paths"]

MODEL_FORMAT = "pydiffgen.model"
FORMAT_VERSION = 1
TRAIN_CHECKPOINT_FORMAT = "pydiffgen.train_checkpoint"
TRAIN_CHECKPOINT_VERSION = 1
_START_OVER = "use a fresh out_dir, or resume=False to start over and overwrite it"


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
    write_pair(weights, desc, state_tensors(model), {
        "format": MODEL_FORMAT,
        "version": FORMAT_VERSION,
        "config": config,
        "n_params": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "meta": meta,
    })
    return weights


def load_model(path, *, device="cpu") -> torch.nn.Module:
    """Rebuild a model saved by ``save_model`` (or at the end of ``train``), in eval mode.

    The architecture comes from the JSON config via ``pydiffgen.models.build``; weights
    from safetensors (no pickle, no ``torch.load``). Missing, corrupt or mismatched files
    raise ``CheckpointError`` naming the file.
    """
    from .models.base import build

    weights, desc = model_paths(path)
    info, tensors, _ = read_pair(weights, desc)
    if not isinstance(info, dict) or info.get("format") != MODEL_FORMAT:
        hint = ""
        if isinstance(info, dict) and info.get("format") == TRAIN_CHECKPOINT_FORMAT:
            hint = " (it is a training checkpoint; load the model.json written next to it)"
        raise CheckpointError(f"{desc} is not a pydiffgen model description{hint}")
    config = info.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise CheckpointError(f"{desc} has no model config (expected a dict with a 'name')")
    kwargs = {k: v for k, v in config.items() if k != "name"}
    meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
    shape = meta.get("data_shape")  # the images it was trained on, when train() saved it
    try:
        model = build(config["name"], data_shape=shape if _is_shape(shape) else None,
                      **kwargs)
    except (ConfigError, InputError) as err:
        raise CheckpointError(f"{desc}: cannot rebuild the model: {err}") from None
    load_state_tensors(model, tensors, source=weights)
    model.meta = meta  # e.g. data_shape and train_config from train()
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------
# training checkpoints
# ----------------------------------------------------------------------------------------


def train_checkpoint_paths(out_dir) -> tuple[Path, Path]:
    """``(checkpoint.safetensors, checkpoint.json)`` of the run in ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir / "checkpoint.safetensors", out_dir / "checkpoint.json"


def save_train_checkpoint(out_dir, *, step: int, losses: list[float], model, ema, optimizer,
                          generator: torch.Generator, train_config: dict,
                          data: dict | None = None) -> None:
    """Write the training state after ``step`` steps to ``out_dir/checkpoint.*``.

    ``ema`` is the EMA copy of ``model`` or None; ``losses`` the loss of every step so far;
    ``train_config`` the run's ``TrainConfig.to_dict()``; ``data`` the identity of the
    training data (``pydiffgen.training.data_identity``). Like ``save_model``, each file
    is written atomically and the safetensors file alone is a complete checkpoint.
    """
    weights, desc = train_checkpoint_paths(out_dir)
    state = optimizer.state_dict()
    tensors = state_tensors(model, "model/")
    if ema is not None:
        tensors.update(state_tensors(ema, "ema/"))
    opt_scalars = {}
    for i, s in state["state"].items():
        for key, value in s.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{i}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                opt_scalars.setdefault(str(i), {})[key] = value
    write_pair(weights, desc, tensors, {
        "format": TRAIN_CHECKPOINT_FORMAT,
        "version": TRAIN_CHECKPOINT_VERSION,
        "step": step,
        "model_config": getattr(model, "config", None),
        "train_config": train_config,
        "data": data,
        "optimizer": {"param_groups": state["param_groups"], "scalars": opt_scalars},
        "generator_state": generator.get_state().tolist(),
        "ema": ema is not None,
        "torch_version": torch.__version__,
        "losses": list(losses),
    }, indent=None)


def load_train_checkpoint(out_dir, *, model, ema, optimizer, generator: torch.Generator,
                          train_config: dict, resumable: Collection[str] = (),
                          data: dict | None = None) -> tuple[int, list[float]]:
    """Restore ``model``, ``ema``, ``optimizer`` and ``generator`` from ``out_dir/checkpoint.*``
    in place; returns ``(step, losses)``.

    The checkpoint must come from the same model config and the same ``train_config``
    (a ``TrainConfig.to_dict()``) except for the keys in ``resumable``, and from the same
    ``data`` identity (the entries both sides record must agree); anything else
    (another config, a missing, corrupt, torn or inconsistent file) raises
    ``CheckpointError`` naming the file and what to do.
    """
    weights, desc = train_checkpoint_paths(out_dir)
    info, tensors, torn = read_pair(weights, desc)
    if not isinstance(info, dict) or info.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(f"{desc} is not a pydiffgen training checkpoint; use a fresh "
                              "out_dir or resume=False to overwrite it")
    _check_same_run(info, desc, model, train_config, resumable)
    _check_same_data(info.get("data"), data, desc)
    try:
        step = int(info["step"])
        losses = [float(v) for v in info["losses"]]
        gen_state = torch.tensor(info["generator_state"], dtype=torch.uint8)
        groups = info["optimizer"]["param_groups"]
        scalars = info["optimizer"].get("scalars", {})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{desc} is incomplete ({type(err).__name__}: {err}); "
                              f"{_START_OVER}") from None
    if len(losses) != step:
        raise CheckpointError(f"{desc} is inconsistent ({len(losses)} losses for step {step}); "
                              f"{_START_OVER}")

    sections = _train_sections(tensors, weights)
    load_state_tensors(model, sections["model"], source=weights)
    if ema is not None:
        load_state_tensors(ema, sections["ema"], source=weights)
    try:
        optimizer.load_state_dict(_optimizer_state(sections["optim"], scalars, groups))
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{desc}: the optimizer state does not fit this model ({err}); "
                              f"{_START_OVER}") from None
    try:
        generator.set_state(gen_state)
    except RuntimeError as err:
        raise CheckpointError(f"{desc}: bad generator state ({err}); {_START_OVER}") from None
    if torn:  # the run goes on from the newer save: its JSON catches up
        write_json(desc, info, indent=None)
    return step, losses


def _check_same_run(info: dict, desc: Path, model, train_config: dict,
                    resumable: Collection[str]) -> None:
    """CheckpointError unless the checkpoint ``info`` (read from ``desc``) was written by
    ``model``'s config and ``train_config`` up to the ``resumable`` keys."""
    saved = info.get("train_config") or {}
    now = _json_normal(train_config)
    diff = sorted(k for k in set(saved) | set(now)
                  if k not in resumable and saved.get(k, "<absent>") != now.get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs now {now.get(k)!r}"
                            for k in diff)
        raise CheckpointError(
            f"{desc} was written by a different training config ({details}); {_START_OVER}"
        )
    model_config = getattr(model, "config", None)
    if _json_normal(model_config) != info.get("model_config"):
        raise CheckpointError(
            f"{desc} was written for a different model ({info.get('model_config')!r}, this "
            f"model is {model_config!r}); {_START_OVER}"
        )


def _check_same_data(saved: dict | None, now: dict | None, desc: Path) -> None:
    """CheckpointError unless the data identities agree on every entry both record (a
    checkpoint from before identities were recorded has none to check)."""
    if not isinstance(saved, dict) or now is None:
        return
    now = _json_normal(now)
    diff = sorted(k for k in set(saved) & set(now) if saved[k] != now[k])
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved[k]!r} vs now {now[k]!r}" for k in diff)
        raise CheckpointError(f"{desc} was trained on other data ({details}); {_START_OVER}")


def _train_sections(tensors: dict, source: Path) -> dict[str, dict]:
    """A training checkpoint's tensors split by their ``model/``, ``ema/``, ``optim/`` prefix."""
    sections: dict[str, dict] = {"model": {}, "ema": {}, "optim": {}}
    for key, value in tensors.items():
        head, _, rest = key.partition("/")
        if head not in sections:
            raise CheckpointError(f"{source} has an unknown entry {key!r}; {_START_OVER}")
        sections[head][rest] = value
    return sections


def _optimizer_state(tensors: dict, scalars: dict, groups: list) -> dict:
    """An optimizer ``state_dict`` from its ``<param>/<name>`` tensors, its JSON scalars
    (``{param: {name: value}}``) and param groups."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        i, _, name = key.partition("/")
        state.setdefault(int(i), {})[name] = value
    for i, extra in scalars.items():
        state.setdefault(int(i), {}).update(extra)
    for group in groups:
        if isinstance(group.get("betas"), list):  # JSON turned Adam's tuple into a list
            group["betas"] = tuple(group["betas"])
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------
# tensor files, shared by models and training checkpoints
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


def write_pair(weights: Path, desc: Path, tensors: dict[str, torch.Tensor], info: dict, *,
               indent: int | None = 2) -> None:
    """Save ``tensors`` to ``weights`` with ``info`` (plus a fresh token) in its header,
    then ``info`` to ``desc``; each write atomic, the weights first."""
    from safetensors.torch import save_file

    info = {**info, "token": secrets.token_hex(8)}
    text = json.dumps(info, default=jsonable)
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pydiffgen", "token": info["token"],
                                               "description": text})
    write_json(desc, info, indent=indent)


def read_pair(weights: Path, desc: Path) -> tuple[object, dict[str, torch.Tensor], bool]:
    """``(description, tensors, torn)`` of a save by ``write_pair``; CheckpointError naming
    the file if missing or corrupt.

    The description is ``desc``'s when both files come from one save. When the save was
    interrupted between the two writes (``desc`` absent or older: ``torn``), it is the one
    in the header of ``weights``, which was written whole first.
    """
    if not weights.exists() and not desc.exists():
        raise CheckpointError(f"{desc} does not exist")
    info = read_json(desc) if desc.exists() else None
    tensors, meta = read_tensors(weights)
    token = meta.get("token")
    if isinstance(info, dict) and token is not None and info.get("token") == token:
        return info, tensors, False
    if "description" not in meta:  # a file from before descriptions were embedded
        raise CheckpointError(
            f"{weights} and {desc} come from different saves (a write was interrupted "
            "between them); delete both and save or train again"
        )
    try:
        embedded = json.loads(meta["description"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{weights} has a corrupt description ({err}); delete it and "
                              "save or train again") from None
    if not isinstance(embedded, dict) or embedded.get("token") != token:
        raise CheckpointError(f"{weights} has a description from another save; delete it "
                              "and save or train again")
    return embedded, tensors, True


def read_tensors(path, *, device="cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, header metadata)`` of a safetensors file; CheckpointError if missing or
    corrupt."""
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
    return tensors, meta


def _is_shape(shape) -> bool:
    return (isinstance(shape, list) and len(shape) >= 2
            and all(isinstance(s, int) and s > 0 for s in shape))


def _json_normal(obj):
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj))
