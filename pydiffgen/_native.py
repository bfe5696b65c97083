"""Loads the compiled extension ``pydiffgen._C`` if it was built; records why not otherwise."""

from __future__ import annotations

import torch  # noqa: F401  - the extension's op registrations need torch loaded first

try:
    from . import _C  # noqa: F401

    LOADED = True
    WHY_NOT: str | None = None
except ImportError as err:
    LOADED = False
    WHY_NOT = f"pydiffgen._C is not built ({err}); reinstall with PYDIFFGEN_BUILD_EXT=1"


def has_cpu_ops() -> bool:
    return LOADED


def has_cuda_ops() -> bool:
    return LOADED and bool(getattr(_C, "WITH_CUDA", False))
