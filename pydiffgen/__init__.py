"""pydiffgen: does a diffusion model memorize or generalize, and why."""

from __future__ import annotations

__version__ = "0.1.0"

from . import errors  # noqa: E402
from .errors import PydiffgenError  # noqa: E402

__all__ = ["PydiffgenError", "available_backends", "errors", "load_model", "sample", "train"]


def available_backends() -> dict:
    """What was built and what can run here: the extension, Triton and every op's backends.

    Returns {"extension": {...}, "triton": ..., "ops": {op: {device: {backend: "ok" | why}}}}.
    """
    import torch

    from . import _native, ops  # noqa: F401 - importing ops registers every backend
    from .kernels import TRITON_WHY_NOT, interpreted
    from .ops import dispatch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    triton = "ok" if TRITON_WHY_NOT is None else TRITON_WHY_NOT
    if TRITON_WHY_NOT is None and interpreted():
        triton = "ok (TRITON_INTERPRET=1: kernels run in the CPU interpreter)"
    return {
        "extension": {
            "cpu": "built" if _native.has_cpu_ops() else _native.WHY_NOT,
            "cuda": "built" if _native.has_cuda_ops() else "not built (no CUDA toolkit/torch)",
        },
        "triton": triton,
        "ops": {
            name: {dev: op.reasons(dev) for dev in devices}
            for name, op in sorted(dispatch.OPS.items())
        },
    }


def __getattr__(name):
    # Heavy entry points load on first use so `import pydiffgen` stays fast.
    if name == "train":
        from .training import train

        return train
    if name == "sample":
        from .diffusion.sampling import sample

        return sample
    if name == "load_model":
        from .checkpoint import load_model

        return load_model
    if name in {"data", "models", "ops", "diffusion", "metrics", "analysis", "experiments",
                "report"}:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'pydiffgen' has no attribute {name!r}")
