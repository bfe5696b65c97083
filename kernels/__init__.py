"""Triton kernels, installed as ``pydiffgen.kernels``.

Each module holds ``@triton.jit`` kernels and a plain launcher; registration and dispatch
live in ``pydiffgen.ops``. Importing this package never fails: ``TRITON_WHY_NOT`` says why
Triton cannot be used when it cannot.
"""

from __future__ import annotations

import os
import sys

if __name__ == "kernels":
    # This folder is pydiffgen.kernels. Python started in the repository root finds it as a
    # top-level `kernels` first, which would shadow the PyPI package of that name (imported
    # by transformers and diffusers). Hand the name over to the installed package when there
    # is one: the import statement returns whatever sys.modules holds once this module ends.
    # (A namespace portion would lose to the regular package by itself, but an editable
    # install cannot map pydiffgen.kernels onto a folder without __init__.py.)
    import importlib.machinery
    import importlib.util

    _here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is not None and _spec.loader is not None:
        _installed = importlib.util.module_from_spec(_spec)
        sys.modules["kernels"] = _installed
        _spec.loader.exec_module(_installed)

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
