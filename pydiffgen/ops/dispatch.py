"""Backend registry: which implementations of each op exist, which can run here, and why not.

Each op registers backends in priority order; ``select`` picks the first that can run on
the inputs' device, or the one forced by ``backend=`` / ``PYDIFFGEN_BACKEND``. A forced
backend that cannot run raises ``BackendError`` listing every backend and its reason.

``PYDIFFGEN_BACKEND`` is either one name applied to every op that has it
(``reference``) or per-op pairs (``knn=reference,topk_merge=cpp``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BackendError


@dataclass(frozen=True)
class Backend:
    name: str
    devices: tuple[str, ...]  # device types it runs on: "cpu", "cuda"
    fn: Callable
    why_not: Callable[[], str | None] = lambda: None  # None when it can run here


@dataclass
class Op:
    name: str
    backends: list[Backend] = field(default_factory=list)

    def register(self, name, devices, fn, why_not=None) -> None:
        self.backends.append(Backend(name, tuple(devices), fn, why_not or (lambda: None)))

    def reasons(self, device_type: str) -> dict[str, str]:
        """Backend name -> "ok" or the reason it cannot run on ``device_type``."""
        out = {}
        for b in self.backends:
            if device_type not in b.devices:
                out[b.name] = f"does not run on {device_type} (runs on {', '.join(b.devices)})"
            else:
                out[b.name] = b.why_not() or "ok"
        return out

    def select(self, device_type: str, backend: str | None = None) -> Backend:
        forced = backend or _env_choice(self.name, {b.name for b in self.backends})
        reasons = self.reasons(device_type)
        if forced is not None:
            if forced not in reasons:
                raise BackendError(
                    f"{self.name}: unknown backend {forced!r}; known: {', '.join(reasons)}"
                )
            if reasons[forced] != "ok":
                listing = "; ".join(f"{k}: {v}" for k, v in reasons.items())
                raise BackendError(
                    f"{self.name}: backend {forced!r} cannot run on {device_type} ({listing})"
                )
            return next(b for b in self.backends if b.name == forced)
        for b in self.backends:
            if reasons[b.name] == "ok":
                return b
        listing = "; ".join(f"{k}: {v}" for k, v in reasons.items())
        raise BackendError(f"{self.name}: no backend can run on {device_type} ({listing})")


OPS: dict[str, Op] = {}


def op(name: str) -> Op:
    return OPS.setdefault(name, Op(name))


def _env_choice(op_name: str, known: set[str]) -> str | None:
    spec = os.environ.get("PYDIFFGEN_BACKEND", "").strip()
    if not spec:
        return None
    if "=" not in spec:
        return spec if spec in known else None
    for part in spec.split(","):
        key, _, value = part.partition("=")
        if key.strip() == op_name:
            return value.strip()
    return None
