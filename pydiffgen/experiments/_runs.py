"""What every experiment shares: its run folder (:class:`RunDir`) and the record the
command line is built from (:class:`Experiment`)."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import config as cfgmod
from ..errors import ConfigError, InputError
from ..io import read_json, write_json

__all__ = ["Eta", "Experiment", "RunDir", "duration", "hold_folder", "log_to_stderr",
           "named_preset", "torch_threads", "training_estimate", "training_rate",
           "writable_folder"]

# folders this process holds, {resolved path: depth}: a command that locks its --out and
# then runs an experiment that locks the same folder holds it once
_HELD: dict[Path, int] = {}


def log_to_stderr(msg: str) -> None:
    """The default log of a run: one line to stderr, flushed (progress of long runs)."""
    sys.stderr.write(msg + "\n")  # one write: lines of processes sharing stderr stay whole
    sys.stderr.flush()


def writable_folder(path) -> Path:
    """``path`` as a folder this process can write into: created if missing, and a probe
    file written and removed there, so an unusable output folder (a file, under a file,
    read-only, immutable) is refused before any work rather than after it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"output folder {path} is a file; pass a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".pydiffgen-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"cannot write into output folder {path}: "
                         f"{err.strerror or err}") from None
    return path


@contextmanager
def hold_folder(path, what: str = "run", lock_name: str = ".lock"):
    """Hold an exclusive lock on the output folder ``path`` (checked writable first) for
    the block, so that two runs never write one folder: a second one is refused at once.

    The lock is an ``flock`` on ``<path>/<lock_name>``, which the kernel drops when the
    holder dies, so a killed run leaves no stale lock; the file holds the holder's pid for
    the message, and is removed on release. Re-entrant within one process.
    """
    path = Path(path)
    new = [p for p in (path, *path.parents) if not p.exists()]  # made here, deepest first
    path = writable_folder(path)
    key = path.resolve() / lock_name
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    fd = _lock(path / lock_name, what)
    _HELD[key] = 1
    try:
        yield path
    except BaseException:
        _release(path / lock_name, fd, key)
        for p in new:  # a run that failed before writing anything leaves no empty folder
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise
    _release(path / lock_name, fd, key)


def _release(lock: Path, fd: int, key: Path) -> None:
    del _HELD[key]
    lock.unlink(missing_ok=True)  # while we hold it: no one else is inside
    os.close(fd)


def _lock(lock: Path, what: str) -> int:
    """An open descriptor holding the flock of ``lock``, with our pid written in it."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{lock.parent} is in use by another {what} (pid {pid}); wait "
                              "for it to finish or use another --out") from None
        # the holder before us removes the file on release: locked a removed file? retry
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


class RunDir:
    """The output folder of one run: it belongs to one config, and everything the run
    makes (models, analyses, results) is written into it atomically as soon as it exists,
    so a killed run rerun with the same config resumes where it stopped.

    ``out_dir`` None: ``runs/<config.name>``. ``log`` receives one line per event,
    prefixed ``[tag]``; ``resume`` False refuses a folder that already holds this run.
    Used as ``with RunDir(...) as run:``; :meth:`claim` locks the folder until the block
    ends (:func:`hold_folder`).
    """

    def __init__(self, out_dir, config, *, resume: bool = True, log=None, tag: str = "run"):
        self.path = Path(out_dir) if out_dir is not None else Path("runs") / config.name
        self.config = config
        self.resume = resume
        self.tag = tag
        self._log = log or log_to_stderr
        self._held = ExitStack()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self._held.close()

    def log(self, msg: str) -> None:
        self._log(f"[{self.tag}] {msg}")

    def claim(self, what: str = "run") -> None:
        """Lock the folder for this run (until the ``with`` block ends), then write
        ``config.json``, or check that the one there is this run's config.

        Any other config is refused rather than mixing results; the same config resumes
        (unless ``resume`` is False). A folder another run holds is refused at once.
        """
        self._held.enter_context(hold_folder(self.path, what))
        stored = self.path / "config.json"
        if stored.exists():
            if read_json(stored) != cfgmod.to_dict(self.config):
                raise ConfigError(
                    f"{self.path} holds a {what} with a different config; use another --out "
                    "or --name, or delete it"
                )
            if not self.resume:
                raise ConfigError(f"{self.path} already holds this {what}; rerun without "
                                  "--no-resume")
        write_json(stored, cfgmod.to_dict(self.config))

    def write_json(self, name: str, obj) -> Path:
        """Write ``obj`` to ``<run>/<name>`` atomically; returns the path."""
        path = self.path / name
        write_json(path, obj)
        return path

    def read_json(self, name: str):
        return read_json(self.path / name)

    def cached(self, key: str, compute: Callable[[], dict], folder: str = "analysis") -> dict:
        """The result of one step, ``<run>/<folder>/<key>.json``: read back when a previous
        run stored it (and ``resume``), else ``compute()``d and stored."""
        path = self.path / folder / f"{key}.json"
        if self.resume and path.exists():
            self.log(f"{key}: analysis done earlier, loading {path}")
            return read_json(path)
        result = compute()
        write_json(path, result)
        self.log(f"analysed {key}")
        return result

    def trained_model(self, folder: str, model: str, model_options: dict, data: Callable,
                      train_config, *, labels=None, snapshot: bool = False,
                      progress: bool = True, label: str | None = None):
        """The denoiser of ``<run>/<folder>`` after ``train_config.steps`` steps, in eval
        mode on ``train_config.device``: loaded when stored, else trained (continuing the
        folder's training checkpoint, if any) with :func:`pydiffgen.training.train`.

        ``models.build(model, channels=C, **model_options)`` builds it after
        ``torch.manual_seed(train_config.seed)`` (the initial weights are a function of the
        seed); ``data()`` gives its training images [N, C, ...] (called only when it must
        train), ``labels`` [N] their classes for a class-conditional model. The EMA weights
        are returned when EMA is on. ``snapshot``: the weights at this step are also kept as
        ``<folder>/step<k>.{json,safetensors}``, so that the run can be trained further and
        still give them back (``<folder>/model.json`` always holds its latest step).
        """
        from .. import checkpoint, models, training

        run_dir = self.path / folder
        steps = train_config.steps
        stored = run_dir / f"step{steps}" if snapshot else run_dir
        desc = checkpoint.model_paths(stored)[1] if snapshot else run_dir / "model.json"
        if desc.exists() and (read_json(desc).get("meta") or {}).get("step") == steps:
            return checkpoint.load_model(stored, device=train_config.device)
        x = data()
        torch.manual_seed(train_config.seed)
        net = models.build(model, channels=x.shape[1], **model_options)
        self.log(f"{label or folder}: training {model} on {len(x)} images to step {steps}")
        result = training.train(net, x, train_config, out_dir=run_dir, resume=True,
                                progress=progress, labels=labels)
        final = result.ema if result.ema is not None else result.model
        if snapshot:
            checkpoint.save_model(stored, final, meta={"step": steps})
        return final.eval().to(train_config.device)


def named_preset(presets: dict, name: str):
    """``presets[name]``, or a ConfigError listing the known names."""
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(presets)}")
    return presets[name]


@dataclass(frozen=True)
class Experiment:
    """An experiment as the command line sees it (``pydiffgen <name> --help``).

    name:    the subcommand; "memorization factors" is the action ``factors`` of
             ``pydiffgen memorization``.
    config:  its frozen-dataclass config; every field is a flag (``--field-name``).
    presets: named configs (``--preset NAME``).
    run:     ``run(config, out_dir, *, resume, progress) -> results`` trains, analyses and
             writes ``report.html`` into ``out_dir`` (a :class:`RunDir`).
    report:  ``report(out_dir) -> results`` rebuilds ``report.html`` of a finished run from
             what it stored (``--report-only RUN``).
    plan:    ``plan(config) -> str``, what a run would do (``--dry-run``).
    summary: ``summary(results) -> [str]``, lines printed after a run (optional).
    """

    name: str
    help: str
    config: type
    presets: dict
    run: Callable
    report: Callable
    plan: Callable
    summary: Callable | None = None

    def preset(self, name: str):
        return named_preset(self.presets, name)


@contextmanager
def torch_threads(n: int | None):
    """Run a block with ``n`` intra-op threads (None: leave the setting alone)."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def duration(seconds: float) -> str:
    """``42 s``, ``4 min``, ``1 h 05 min``: a time for people, to the unit that matters."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def training_rate(model: str, model_options: dict, shape, train_config) -> float:
    """Training images per second of ``models.build(model, **model_options)`` on images of
    ``shape`` [C, H, W] with ``train_config`` (its batch size, σ distribution, device), on
    this machine now: the time of a few real steps on random images after a warm-up. The
    content of the images does not change the time of a step."""
    from .. import models, training

    g = torch.Generator().manual_seed(0)
    x = torch.randn(max(2, train_config.batch_size), *shape, generator=g)
    classes = model_options.get("num_classes") or 0  # a class-conditional model's labels
    labels = torch.randint(classes, (len(x),), generator=g) if classes else None

    def seconds(steps: int) -> float:
        tc = dataclasses.replace(train_config, steps=steps, checkpoint_every=None)
        net = models.build(model, channels=shape[0], **model_options)
        t0 = time.perf_counter()
        training.train(net, x, tc, labels=labels, progress=False)
        return time.perf_counter() - t0

    seconds(2)  # warm-up: first calls allocate and pick kernels
    return 6 * train_config.batch_size / max(seconds(8) - seconds(2), 1e-6)


def training_estimate(images: int, rate: float) -> str:
    """The plan's line for ``images`` training images (steps × batch, all models) at
    ``rate`` images/s."""
    return (f"  estimated training time: {duration(images / rate)} ({images} images at "
            f"{rate:.0f} images/s, measured here with {torch.get_num_threads()} threads); "
            "evaluation comes on top. An estimate: other jobs on the machine slow it down")


class Eta:
    """The overall progress of ``total`` similar steps of a run, one log line per step:
    ``model 3/8 (N=16 B) … ETA 4 min``, the ETA from the mean time of the steps so far.
    Steps run one after the other (:meth:`step` as each starts) or ``at_once`` at a time
    (:meth:`finished` as each ends; they end in rounds of ``at_once``)."""

    def __init__(self, total: int, log: Callable[[str], None], what: str = "model",
                 at_once: int = 1):
        self.total, self.log, self.what, self.at_once = total, log, what, at_once
        self.started = 0
        self.t0 = time.perf_counter()

    def step(self, label: str) -> None:
        """Log the start of the next step (``label`` names it)."""
        self.started += 1
        self.log(f"{self.what} {self.started}/{self.total} ({label}){self._eta(self.started - 1)}")

    def finished(self, label: str) -> None:
        """Log the end of one more step (``label`` names it)."""
        self.started += 1
        self.log(f"{self.what} {self.started}/{self.total} done ({label})"
                 f"{self._eta(self.started)}")

    def _eta(self, done: int) -> str:
        if not done or done == self.total:
            return ""
        rounds, begun = -(-self.total // self.at_once), -(-done // self.at_once)
        left = (time.perf_counter() - self.t0) / begun * (rounds - begun)
        return f" … ETA {duration(left)}"
