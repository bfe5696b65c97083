"""Atomic file writes: a result or checkpoint is either complete on disk or absent.

A write goes to a temporary ``.NAME.p<pid>.<random>.tmp`` beside ``NAME`` and is renamed
over it once complete. The file gets the mode ``open(path, "w")`` would give it (0666
minus the umask), so a shared run folder stays readable by others.
A process killed mid-write leaves its temporary behind: the next write of the same
file removes the temporaries of writers that no longer run.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

# a temporary without a pid in its name (older pydiffgen) counts as stale after this long
_STALE_UNKNOWN_S = 3600.0


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = path.with_name(f".{path.name}.p{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield tmp
        # the mode a plain open() gives; writers such as safetensors recreate the file 0600
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temporaries(directory: str | os.PathLike, name: str | None = None) -> None:
    """Delete the ``.NAME.*.tmp`` files in ``directory`` (of the file ``name``, or of any
    file) left by writers that were killed; a live writer's temporary is kept."""
    pattern = f".{_glob_escape(name)}.*.tmp" if name is not None else ".*.tmp"
    for tmp in Path(directory).glob(pattern):
        parts = tmp.name[:-len(".tmp")].split(".")
        pid = parts[-2][1:] if len(parts) >= 4 and parts[-2].startswith("p") else ""
        try:
            stale = (not _running(int(pid)) if pid.isdigit()
                     else time.time() - tmp.stat().st_mtime > _STALE_UNKNOWN_S)
            if stale:
                tmp.unlink()
        except FileNotFoundError:  # its writer finished or another sweep took it
            pass


def _umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path, obj, *, indent: int = 2) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, sort_keys=False, default=jsonable) + "\n")


def read_json(path):
    from .errors import CheckpointError

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); delete it or rerun") from None


def jsonable(obj):
    """``json.dumps`` ``default=``: tensors, arrays, numpy scalars and paths as JSON values."""
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
