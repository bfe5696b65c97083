"""Loads the compiled extension ``pydiffgen._C`` if it was built; records why not otherwise."""

from __future__ import annotations

import torch  # the extension's op registrations need torch loaded first

try:
    from . import _C

    LOADED = True
    WHY_NOT: str | None = None
except ImportError as err:
    LOADED = False
    WHY_NOT = f"pydiffgen._C is not built ({err}); reinstall with PYDIFFGEN_BUILD_EXT=1"


def has_cpu_ops() -> bool:
    return LOADED


def has_cuda_ops() -> bool:
    return LOADED and bool(getattr(_C, "WITH_CUDA", False))


def cpu_why_not(*ops: str) -> str | None:
    """None when the extension's CPU kernels of ``ops`` (names in ``torch.ops.pydiffgen``)
    can run here, else the reason: the extension is missing or predates one of them."""
    if not has_cpu_ops():
        return WHY_NOT
    for name in ops:
        if not hasattr(torch.ops.pydiffgen, name):
            return f"pydiffgen._C predates the {name} kernel; rebuild the extension"
    return None


def cuda_why_not() -> str | None:
    """None when the extension's CUDA kernels can run here, else the reason."""
    if not has_cuda_ops():
        return "pydiffgen._C was built without CUDA (needs a CUDA torch and CUDA_HOME at build)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None
