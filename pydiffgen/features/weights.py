"""Reading a user's weights file into a network, strictly: never pickled code, never a
silently half-loaded model."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import CheckpointError

# BatchNorm's step counter: absent from some converted files, unused in eval mode
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


def existing(path, what: str, fetch: str) -> Path:
    """``path`` as a Path, or a one-line error saying where the ``what`` must be and how
    to get it there (pydiffgen downloads nothing)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: put the {what} there ({fetch}); "
                              "pydiffgen downloads nothing")
    return p


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a ``torch.save`` file read with
    ``weights_only=True`` (tensors only; a pickle that would run code is refused)."""
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; expected a .safetensors or .pt/.pth "
                              "state dict")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: expected a .safetensors file ({err})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile,
            OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a state dict readable with weights_only=True "
                              f"({first}); save it with torch.save(model.state_dict()) or "
                              "as safetensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got "
                              f"{type(state).__name__}")
    return state


def load_strict(network: torch.nn.Module, state: dict, source: Path) -> torch.nn.Module:
    """Load ``state`` into ``network`` requiring the same keys and shapes; the error lists
    missing and unexpected keys (a few of each)."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label} {len(keys)}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected),
                                     ("wrong shape", shapes)) if keys]
        raise CheckpointError(f"{source} does not match {type(network).__name__}'s keys "
                              f"(torchvision naming): {'; '.join(parts)}")
    network.load_state_dict(state, strict=False)
    return network
