"""Where a result came from: pydiffgen's version, the git commit of a checkout, the date
and the machine (``pydiffgen --version`` and the reports' run metadata)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

from .. import __version__

_ROOT = Path(__file__).resolve().parents[2]  # the checkout, when pydiffgen runs from one


def git_sha() -> str | None:
    """The short commit of the checkout pydiffgen is imported from (None: an installed
    copy, or no git); "+dirty" when tracked files differ from it."""
    if not (_ROOT / ".git").exists():
        return None
    try:
        sha = subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        dirty = subprocess.run(["git", "-C", str(_ROOT), "diff", "--quiet", "HEAD"],
                               capture_output=True, timeout=5).returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return sha.strip() + ("+dirty" if dirty else "")


def version_text() -> str:
    """``pydiffgen 0.1.0 (git 1a2b3c4)``, the commit only in a checkout."""
    sha = git_sha()
    return f"pydiffgen {__version__}" + (f" (git {sha})" if sha else "")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS / Windows
        return os.cpu_count() or 1


def run_metadata() -> dict:
    """{"version", "git", "date", "machine", "cores", "threads"} of the running process."""
    import torch

    uname = platform.uname()
    return {
        "version": __version__,
        "git": git_sha(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{uname.node} ({uname.system} {uname.machine}, "
                   f"{platform.processor() or uname.machine}), Python "
                   f"{platform.python_version()}, torch {torch.__version__}",
        "cores": usable_cores(),
        "threads": torch.get_num_threads(),
    }
