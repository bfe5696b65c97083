"""Feature sets as the feature-space metrics take them: [N, F] float rows, checked once.

Every metric of Naeem, Alaa, Meehan, Jiralerspong, Carlini and Somepalli works on encoder
features (one row per image); a bad row would silently poison a mean or a neighbour search,
so each set is checked here with one-line errors that name the argument.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def as_features(x, name: str, *, min_rows: int = 1) -> torch.Tensor:
    """x: torch tensor or numpy array [N, F] of floats -> a float32/float64 tensor [N, F]
    (float16 / bfloat16 widen to float32; no copy otherwise). Raises InputError when x is
    not 2-D, not floating point, has fewer than ``min_rows`` rows, or has NaN/Inf rows."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise InputError(f"{name} must hold floats, got numpy dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor or numpy array [N, F], "
                         f"got {type(x).__name__}")
    if x.ndim != 2:
        raise InputError(f"{name} must be features [N, F], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{name} must be floating point features, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {tuple(x.shape)}); expected features [N, F]")
    if x.shape[0] < min_rows:
        raise InputError(f"{name} needs at least {min_rows} rows here, got {x.shape[0]}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = bad.nonzero()[:, 0].tolist()
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise InputError(f"{name} has NaN/Inf in {len(rows)} row(s): {shown}")
    return x


def same_width(**sets: torch.Tensor) -> None:
    """All feature sets [N_i, F] share F (one encoder made them)."""
    widths = {name: t.shape[1] for name, t in sets.items()}
    if len(set(widths.values())) > 1:
        shown = ", ".join(f"{n} has {w}" for n, w in widths.items())
        raise InputError(f"feature widths differ ({shown}); expected one encoder's features")


def one_device(**sets: torch.Tensor) -> None:
    """The searches need every set on one device."""
    devices = {name: t.device for name, t in sets.items()}
    if len(set(devices.values())) > 1:
        shown = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise InputError(f"feature sets must be on one device ({shown})")


def common_dtype(*sets: torch.Tensor) -> list[torch.Tensor]:
    """float64 for all when any is float64, else float32 (the searches take one dtype)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in sets) else torch.float32
    return [t.to(dtype) for t in sets]


def agree(**sets: torch.Tensor) -> list[torch.Tensor]:
    """Checked sets (``as_features``) -> the same sets after one width, one device and one
    dtype are ensured, in the order given."""
    same_width(**sets)
    one_device(**sets)
    return common_dtype(*sets.values())
