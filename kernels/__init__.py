"""Triton kernels, installed as ``pydiffgen.kernels``.

Each module holds ``@triton.jit`` kernels and a plain launcher; registration and dispatch
live in ``pydiffgen.ops``. Importing this package never fails: ``TRITON_WHY_NOT`` says why
Triton cannot be used when it cannot.
"""

from __future__ import annotations

import os

try:
    import triton  # noqa: F401

    TRITON_WHY_NOT: str | None = None
except ImportError as err:  # pragma: no cover - depends on the machine
    TRITON_WHY_NOT = f"triton is not installed ({err})"


def interpreted() -> bool:
    """True when kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def cuda_why_not() -> str | None:
    """None when Triton kernels can run on a CUDA device here, else the reason."""
    if TRITON_WHY_NOT is not None:
        return TRITON_WHY_NOT
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None
