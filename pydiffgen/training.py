"""Denoising score-matching training: Adam, lr halving, EMA, clipping, checkpoints, resume.

``train(model, data, TrainConfig(steps=..., batch_size=...), out_dir=...)``. Every step
draws, from one ``torch.Generator`` seeded with ``config.seed`` and in this order, a batch
of training indices (uniformly, with replacement), the noise levels σ and the noise n,
then minimises the loss of ``pydiffgen.diffusion.losses`` on y = x + σn:

- ``sigma_dist="kadkhodaie"``: σ = U²·sigma_max, unweighted MSE ‖D(y) − x‖² (Kadkhodaie
  et al. 2024; sigma_max = 2 for our [-1, 1] data is their σ = U² on [0, 1] images);
- ``sigma_dist="edm"``: ln σ ~ N(P_mean, P_std²) with λ(σ) = (σ² + σ_data²)/(σ σ_data)²
  (Karras et al. 2022);
- ``sigma_dist="log-uniform"``: ln σ ~ U(ln sigma_min, ln sigma_max) with the loss
  ‖D(y) − x‖²/σ², the error relative to the noise (the MSE/σ² that the manifold
  analyses of Kadkhodaie et al. read), so every σ of the range counts alike.

Runs are deterministic given the seed (on one device and software stack): the same
config gives bitwise the same weights, and a run interrupted after a checkpoint and
resumed gives bitwise the same weights and losses as an uninterrupted one, because the
checkpoint holds the model, EMA and Adam tensors, the generator state and the losses.
Models using dropout draw from torch's global RNG, which is re-seeded from (seed, step)
every step inside ``torch.random.fork_rng`` so that stays reproducible as well (the
caller's global RNG state is restored afterwards). On CUDA the loop is just as
deterministic, but some kernels are not: bitwise reproducibility there also needs
``torch.use_deterministic_algorithms(True)`` (and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from . import checkpoint as ckpt
from ._checks import check_tensor
from .errors import CheckpointError, ConfigError, InputError, PydiffgenError

__all__ = ["TrainConfig", "TrainResult", "data_identity", "train"]

SIGMA_DISTS = ("kadkhodaie", "edm", "log-uniform")
# Fields that may change between a checkpoint and its resumption: they do not change the
# math of the steps already taken (``steps`` may grow to train longer).
_RESUMABLE_FIELDS = {"steps", "checkpoint_every", "log_every", "channels_last", "compile"}
# Options written to checkpoints only when set, so older checkpoints still match.
_DEFAULT_OMITTED = {"sigma_min": 0.02, "label_dropout": 0.0, "channels_last": False,
                    "autocast_cpu": False, "compile": False}


@dataclass(frozen=True)
class TrainConfig:
    """How to train a denoiser. Validated on construction (``ConfigError``).

    steps:            total optimisation steps (a resumed run continues up to this number).
    batch_size:       images per step, drawn uniformly with replacement.
    lr:               Adam learning rate (paper: 1e-3).
    lr_halve_every:   halve lr every this many steps (paper: every 100 epochs); None: constant.
    sigma_dist:       "kadkhodaie" (σ = U²·sigma_max, unweighted loss), "edm" (log-normal σ,
                      λ(σ)-weighted loss) or "log-uniform" (ln σ uniform on
                      [ln sigma_min, ln sigma_max], loss ‖D(y) − x‖²/σ²).
    sigma_min:        bottom of the log-uniform σ range.
    sigma_max:        top of the Kadkhodaie and log-uniform σ ranges; 2 for [-1, 1] images
                      (paper: 1 on [0, 1]).
    P_mean, P_std:    EDM log-normal σ (ln σ ~ N(P_mean, P_std²)).
    sigma_data:       σ_data of the EDM loss weighting.
    ema:              EMA decay of the weights (None: no EMA). The decay used at step t is
                      min(ema, (1 + t)/(10 + t)) so short runs are not dominated by the
                      initial weights.
    grad_clip:        clip the global gradient norm to this (None: no clipping).
    seed:             seeds the generator of batch indices, σ and noise.
    checkpoint_every: write a checkpoint every this many steps (None: only at the end);
                      needs ``out_dir``.
    device:           "cpu", "cuda", "cuda:1", ...
    autocast:         bf16 autocast of the forward pass on CUDA (ignored on CPU); the
                      loss, weights and optimiser stay float32.
    autocast_cpu:     bf16 autocast of the forward pass on CPU as well (off by default: fast
                      only on CPUs with AVX512-BF16 / AMX; see README "Fast training").
    channels_last:    keep the model and the batches in channels-last memory format (4-D
                      data only); no change to the math.
    compile:          run the model through ``torch.compile`` (first steps pay the
                      compilation); no change to the math beyond rounding.
    log_every:        refresh the progress bar's loss and images/s every this many steps.
    label_dropout:    with ``train(..., labels=...)``: the probability that a step's label is
                      replaced by the model's null label (classifier-free guidance training,
                      Ho & Salimans 2022); written to checkpoints only when non-zero.
    """

    steps: int
    batch_size: int
    lr: float = 1e-3
    lr_halve_every: int | None = None
    sigma_dist: str = "kadkhodaie"
    sigma_min: float = 0.02
    sigma_max: float = 2.0
    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 0.5
    ema: float | None = 0.999
    grad_clip: float | None = 1.0
    seed: int = 0
    checkpoint_every: int | None = 1000
    device: str = "cpu"
    autocast: bool = True
    log_every: int = 50
    label_dropout: float = 0.0
    autocast_cpu: bool = False
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        def integer(name, minimum, optional=False):
            v = getattr(self, name)
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                extra = " or None" if optional else ""
                raise ConfigError(f"TrainConfig.{name} must be an integer >= {minimum}{extra}, "
                                  f"got {v!r}")
            object.__setattr__(self, name, int(v))  # numpy ints -> int (JSON, comparisons)

        def number(name, *, positive=True, optional=False, below=None):
            v = getattr(self, name)
            if optional and v is None:
                return
            ok = isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
            ok = ok and math.isfinite(v) and (v > 0 if positive else True)
            ok = ok and (below is None or v < below)
            if not ok:
                what = "a positive finite number" if positive else "a finite number"
                if below is not None:
                    what += f" below {below}"
                extra = " or None" if optional else ""
                raise ConfigError(f"TrainConfig.{name} must be {what}{extra}, got {v!r}")
            object.__setattr__(self, name, float(v))

        integer("steps", 1)
        integer("batch_size", 1)
        integer("lr_halve_every", 1, optional=True)
        integer("seed", 0)
        integer("checkpoint_every", 1, optional=True)
        integer("log_every", 1)
        number("lr")
        number("sigma_min")
        number("sigma_max")
        number("P_mean", positive=False)
        number("P_std")
        number("sigma_data")
        number("ema", optional=True, below=1.0)
        number("grad_clip", optional=True)
        if (isinstance(self.label_dropout, bool) or not isinstance(
                self.label_dropout, (int, float, np.floating, np.integer))
                or not 0.0 <= self.label_dropout <= 1.0):
            raise ConfigError(f"TrainConfig.label_dropout must be a number in [0, 1], "
                              f"got {self.label_dropout!r}")
        object.__setattr__(self, "label_dropout", float(self.label_dropout))
        if self.sigma_dist not in SIGMA_DISTS:
            raise ConfigError(
                f"TrainConfig.sigma_dist must be one of {', '.join(SIGMA_DISTS)}, "
                f"got {self.sigma_dist!r}"
            )
        if self.sigma_dist == "log-uniform" and not self.sigma_min < self.sigma_max:
            raise ConfigError(f"TrainConfig.sigma_min ({self.sigma_min}) must be below "
                              f"sigma_max ({self.sigma_max})")
        for flag in ("autocast", "autocast_cpu", "channels_last", "compile"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"TrainConfig.{flag} must be True or False, got "
                                  f"{getattr(self, flag)!r}")
        if not isinstance(self.device, str):
            raise ConfigError(f"TrainConfig.device must be a string such as 'cpu' or 'cuda', "
                              f"got {self.device!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"TrainConfig.device {self.device!r} is not a torch device "
                              "('cpu', 'cuda', 'cuda:0', ...)") from None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key, default in _DEFAULT_OMITTED.items():  # older checkpoints stay comparable
            if d[key] == default:
                del d[key]
        return d


@dataclass
class TrainResult:
    """What ``train`` returns. Models are left in eval mode.

    model:        the trained model (the object passed in, updated in place).
    ema:          a copy holding the EMA weights, or None when ``config.ema`` is None.
    losses:       the loss of every step, from step 1 (including steps of a resumed run).
    steps:        steps done in total.
    images_per_s: training throughput of this call (0.0 if it had nothing left to do).
    out_dir:      where checkpoints and the final model went, or None.
    """

    model: torch.nn.Module
    ema: torch.nn.Module | None
    losses: list[float] = field(repr=False)
    steps: int
    images_per_s: float
    out_dir: Path | None = None


def train(
    model: torch.nn.Module,
    data,
    config: TrainConfig,
    *,
    out_dir=None,
    resume: bool = True,
    progress: bool = True,
    callback: Callable | None = None,
    labels=None,
    distributed: bool = False,
    dataset: dict | None = None,
) -> TrainResult:
    """Train ``model`` (``model(y, sigma) -> D``) on ``data`` [N, *F] by denoising score matching.

    data:     the images [N, *F], or the ``(images, info)`` pair of
              ``pydiffgen.data.load(name, return_info=True)``, whose ``info["labels"]`` a
              class-conditional model trains on when ``labels`` is not given.

    out_dir:  if given, checkpoints go to ``out_dir/checkpoint.{safetensors,json}`` every
              ``config.checkpoint_every`` steps and at the end, and the final weights (the
              EMA weights when EMA is on) to ``out_dir/model.{safetensors,json}``
              (``pydiffgen.load_model(out_dir)`` reads them back).
    resume:   continue from ``out_dir``'s checkpoint if there is one (its config must match
              except for steps / checkpoint_every / log_every, else CheckpointError);
              False starts afresh and overwrites it.
    progress: show a tqdm bar with the loss and images/s.
    callback: called as ``callback(step, loss, model)`` after every step (and after that
              step's checkpoint); an exception it raises stops training.
    labels:   optional int [N] class labels of ``data`` for a class-conditional model
              (called ``model(y, sigma, cond=labels)``, e.g. ``UNet(num_classes=K)``);
              each label is replaced by the null label ``model.null_cond`` with
              probability ``config.label_dropout`` (classifier-free guidance training),
              drawn from the generator after the noise. Without labels the steps draw
              exactly what they always drew. The model's config (``num_classes``) goes
              into the checkpoints, so ``load_model`` rebuilds it conditional.
    distributed: data-parallel over the default process group (``torchrun``, see
              ``pydiffgen.distributed.init``) with DistributedDataParallel: every rank draws
              the whole global batch of ``config.batch_size`` from the same generator and
              keeps its slice ``distributed.shard(batch_size, rank, world)``, so R ranks
              take the same steps as one process up to float reduction order (layers with
              batch statistics, e.g. BFBatchNorm2d, see their rank's slice only). Only
              rank 0 writes checkpoints and the model; every rank returns the result.
    dataset:  the data's name and options (e.g. ``{"name": "digits", "options": {...}}``),
              recorded with the data's shape and content hash (``data_identity``) in
              checkpoints and the model; resuming on other data raises CheckpointError.
    """
    _check_arguments(model, config, callback)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TrainConfig.device is 'cuda' but no CUDA device is available here")
    data, labels = _with_dataset_labels(data, labels, model)
    x_all = _as_data(data).to(device)  # [N, *F]
    y_all = _as_labels(labels, model, len(x_all), device)  # [N] or None
    if config.label_dropout and y_all is None:
        raise ConfigError("TrainConfig.label_dropout > 0 needs labels=... in train()")
    out_dir = Path(out_dir) if out_dir is not None else None
    ranks, device = _ranks(config, device, distributed)

    run = _Run(model, x_all, y_all, config, device, ranks, out_dir)
    if out_dir is not None:
        run.data = data_identity(x_all, y_all, dataset)
    start = run.resume() if resume and run.has_checkpoint() else 0
    run.parallelize()  # after the checkpoint: DDP broadcasts rank 0's state at construction
    n_done, elapsed = _loop(run, start, progress, callback)
    if out_dir is not None and ranks.main:
        run.save_final()
    if ranks.world > 1:
        torch.distributed.barrier()  # rank 0's files exist when train returns on any rank
    model.eval()
    if run.ema is not None:
        run.ema.eval()
    rate = n_done * config.batch_size / elapsed if n_done and elapsed > 0 else 0.0
    return TrainResult(model=model, ema=run.ema, losses=list(run.losses), steps=config.steps,
                       images_per_s=rate, out_dir=out_dir)


def _loop(run: _Run, start: int, progress: bool, callback) -> tuple[int, float]:
    """Steps ``start + 1 .. config.steps`` of ``run``, with progress bar, checkpoints and
    ``callback``; returns (steps done, seconds taken)."""
    from tqdm.auto import tqdm

    config = run.config
    run.model.train()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=run.fork_devices()), tqdm(
        total=config.steps, initial=start, disable=not (progress and run.ranks.main),
        desc="train", unit="step", dynamic_ncols=True,
    ) as bar:
        for step in range(start, config.steps):
            run.set_lr(step)
            # dropout & co. draw from the global RNG: make it a function of (seed, step)
            torch.manual_seed(config.seed * 1_000_003 + step)
            loss = run.loss(run.draw_batch())
            run.optimizer_step(loss)
            run.update_ema(step)
            run.record(loss)
            done = step + 1

            shown = done % config.log_every == 0 or done == config.steps
            if callback is not None or shown:
                run.flush()
            if shown:
                recent = run.losses[-config.log_every:]
                rate = (done - start) * config.batch_size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4g}", img_s=f"{rate:.0f}",
                                refresh=False)
            bar.update(1)
            if run.out_dir is not None and config.checkpoint_every is not None and (
                done % config.checkpoint_every == 0
            ):
                run.checkpoint(done)
            if callback is not None:
                callback(done, run.losses[-1], run.model)
        run.flush()
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        elapsed = time.perf_counter() - t0
    return config.steps - start, elapsed


# ----------------------------------------------------------------------------------------
# setup
# ----------------------------------------------------------------------------------------


def _check_arguments(model, config, callback) -> None:
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("model has no trainable parameters")
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be callable, got {type(callback).__name__}")


@dataclass(frozen=True)
class _Ranks:
    """This process's place in data-parallel training (rank 0 of 1 when not distributed).

    part:  this rank's slice of every global batch.
    share: its fraction of the batch; the global mean loss is Σ_r share_r · loss_r.
    """

    rank: int
    world: int
    part: slice
    share: float

    @property
    def main(self) -> bool:
        return self.rank == 0


def _ranks(config: TrainConfig, device: torch.device, distributed: bool):
    """``(_Ranks, device)``: with ``distributed``, this rank of the default process group
    and, under torchrun's plain "cuda", the rank's own GPU."""
    if distributed:
        from . import distributed as dist

        rank, world = dist.rank(), dist.world_size()
        if device.type == "cuda" and device.index is None:  # torchrun: one GPU per rank
            device = torch.device("cuda", torch.cuda.current_device())
        if config.batch_size < world:
            raise ConfigError(f"TrainConfig.batch_size={config.batch_size} is smaller than the "
                              f"{world} ranks; every rank needs at least one image per step")
    else:
        rank, world = 0, 1
    part = dist.shard(config.batch_size, rank, world) if world > 1 else range(config.batch_size)
    share = (part.stop - part.start) / config.batch_size
    return _Ranks(rank, world, slice(part.start, part.stop), share), device


class _Batch(NamedTuple):
    """This rank's part of one step's batch: images x [B, *F], σ [B], noise n [B, *F]
    and class labels [B] (None for an unconditional model)."""

    x: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    labels: torch.Tensor | None


class _Run:
    """One call of ``train``: the state a checkpoint holds (model, EMA copy, Adam, the
    generator of batches, σ and noise, the losses) and the steps that advance it."""

    def __init__(self, model, x_all, y_all, config: TrainConfig, device, ranks: _Ranks,
                 out_dir: Path | None):
        self.model, self.config, self.device, self.ranks = model, config, device, ranks
        self.x_all, self.y_all, self.out_dir = x_all, y_all, out_dir  # [N, *F], [N] or None
        model.to(device)
        self.channels_last = config.channels_last and x_all.ndim == 4
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.ema = None
        if config.ema is not None:
            self.ema = copy.deepcopy(model).requires_grad_(False)
        self.gen = torch.Generator(device=device).manual_seed(config.seed)
        self.losses: list[float] = []
        self.pending: list[torch.Tensor] = []  # losses not yet moved to the host
        self.saved_step: int | None = None  # the step of the checkpoint on disk
        self.data: dict | None = None  # data_identity of x_all, for checkpoints
        self.ddp = None
        self.forward_model = model
        self.loss_fn = _loss_fn(config)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.use_autocast = (config.autocast and device.type == "cuda") or (
            config.autocast_cpu and device.type == "cpu")

    # --- setup ----------------------------------------------------------------------------

    def has_checkpoint(self) -> bool:
        # either file: a run killed inside its first save has only the (complete) weights
        return self.out_dir is not None and any(
            p.exists() for p in ckpt.train_checkpoint_paths(self.out_dir))

    def resume(self) -> int:
        """Load the checkpoint in ``out_dir``; returns its step."""
        start, self.losses = ckpt.load_train_checkpoint(
            self.out_dir, model=self.model, ema=self.ema, optimizer=self.optimizer,
            generator=self.gen, train_config=self.config.to_dict(), resumable=_RESUMABLE_FIELDS,
            data=self.data)
        if start > self.config.steps:
            raise CheckpointError(
                f"{ckpt.train_checkpoint_paths(self.out_dir)[1]} is at step {start}, beyond the "
                f"requested steps={self.config.steps}; ask for at least {start} steps, use a "
                "fresh out_dir or resume=False"
            )
        self.saved_step = start
        return start

    def parallelize(self) -> None:
        """Wrap the forward model in DistributedDataParallel (several ranks) and
        ``torch.compile`` (``config.compile``)."""
        if self.ranks.world > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.forward_model = self.ddp
        if self.config.compile:
            self.forward_model = torch.compile(self.forward_model)

    def fork_devices(self) -> list[int]:
        """The CUDA devices whose RNG ``torch.random.fork_rng`` must save and restore."""
        if self.device.type != "cuda":
            return []
        return [self.device.index if self.device.index is not None
                else torch.cuda.current_device()]

    # --- one step ---------------------------------------------------------------------------

    def set_lr(self, step: int) -> None:
        """lr halved every ``lr_halve_every`` steps."""
        lr = self.config.lr
        if self.config.lr_halve_every is not None:
            lr = self.config.lr * 0.5 ** (step // self.config.lr_halve_every)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def draw_batch(self) -> _Batch:
        """One global batch, all from ``gen`` in this order: indices, σ, noise, then the
        label dropout; this rank keeps its part."""
        config, gen, device, part = self.config, self.gen, self.device, self.ranks.part
        idx = torch.randint(self.x_all.shape[0], (config.batch_size,), generator=gen,
                            device=device)
        x = self.x_all[idx]  # [B, *F]
        sigma = _draw_sigma(config, gen, device)  # [B]
        noise = torch.randn(x.shape, generator=gen, device=device)  # [B, *F]
        x, sigma, noise = x[part], sigma[part], noise[part]
        if self.channels_last:  # same values, another memory layout
            x = x.contiguous(memory_format=torch.channels_last)
            noise = noise.contiguous(memory_format=torch.channels_last)
        labels = None
        if self.y_all is not None:
            labels = self.y_all[idx]  # [B]
            if config.label_dropout:  # classifier-free guidance (Ho & Salimans 2022)
                drop = torch.rand(config.batch_size, generator=gen, device=device)
                null = self.model.null_cond.to(device)  # [1]
                labels = torch.where(drop < config.label_dropout, null, labels)
            labels = labels[part]
        return _Batch(x, sigma, noise, labels)

    def loss(self, batch: _Batch) -> torch.Tensor:
        """The denoising loss of this rank's part of the batch (bf16 autocast if asked)."""
        net = self.forward_model
        if batch.labels is not None:
            net = _Conditioned(net, batch.labels)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_autocast):
            return self.loss_fn(net, batch.x, batch.sigma, batch.noise)

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Backward, gradient clipping, Adam."""
        self.optimizer.zero_grad(set_to_none=True)
        # DDP averages the ranks' gradients: world·share makes that the global mean's
        scale = self.ranks.world * self.ranks.share
        (loss * scale if self.ddp is not None else loss).backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.optimizer.step()

    def update_ema(self, step: int) -> None:
        if self.ema is not None:
            _update_ema(self.ema, self.model, min(self.config.ema, (1 + step) / (10 + step)))

    def record(self, loss: torch.Tensor) -> None:
        """Keep the step's loss on the device until the next ``flush``."""
        self.pending.append(loss.detach() * self.ranks.share if self.ddp is not None
                            else loss.detach())

    def flush(self) -> None:
        """Move the pending losses to ``losses`` (the global mean over ranks); a non-finite
        loss stops training."""
        if not self.pending:
            return
        values = torch.stack(self.pending)
        if self.ddp is not None:
            torch.distributed.all_reduce(values)  # Σ_r share_r · loss_r
        values = values.tolist()
        self.pending.clear()
        for i, v in enumerate(values):
            if not math.isfinite(v):
                raise PydiffgenError(
                    f"training diverged: the loss is {v} at step {len(self.losses) + i + 1}; "
                    "lower TrainConfig.lr or enable grad_clip"
                )
        self.losses.extend(values)

    # --- checkpoints --------------------------------------------------------------------------

    def checkpoint(self, step: int) -> None:
        """The training checkpoint of ``step`` (written by rank 0)."""
        self.flush()
        if self.ranks.main:
            ckpt.save_train_checkpoint(
                self.out_dir, step=step, losses=self.losses, model=self.model, ema=self.ema,
                optimizer=self.optimizer, generator=self.gen, train_config=self.config.to_dict(),
                data=self.data)
        self.saved_step = step

    def save_final(self) -> None:
        """The last checkpoint, unless on disk already, and the final model (the EMA
        weights when EMA is on) for ``pydiffgen.load_model(out_dir)``."""
        steps = self.config.steps
        if self.saved_step != steps:
            self.checkpoint(steps)
        final = self.ema if self.ema is not None else self.model
        if getattr(final, "config", None):
            ckpt.save_model(self.out_dir, final, meta={
                "weights": "ema" if self.ema is not None else "model",
                "step": steps,
                "train_config": self.config.to_dict(),
                "final_loss": self.losses[-1] if self.losses else None,
                "data_shape": list(self.x_all.shape[1:]),
                "data": self.data,
            })


# ----------------------------------------------------------------------------------------
# pieces of a step
# ----------------------------------------------------------------------------------------


def data_identity(x: torch.Tensor, labels: torch.Tensor | None = None,
                  dataset: dict | None = None) -> dict:
    """What a checkpoint records of its training data: the shape and SHA-256 of ``x``
    [N, *F] (float32, contiguous) and of ``labels`` [N], plus ``dataset`` (name, options)."""
    if dataset is not None and not isinstance(dataset, dict):
        raise InputError(f"dataset must be a dict such as {{'name': ..., 'options': ...}}, "
                         f"got {type(dataset).__name__}")
    identity = dict(dataset or {})
    identity["shape"] = list(x.shape)
    identity["sha256"] = _sha256(x)
    if labels is not None:
        identity["labels_sha256"] = _sha256(labels)
    return identity


def _sha256(t: torch.Tensor) -> str:
    array = t.detach().cpu().contiguous().numpy()
    return hashlib.sha256(array.data).hexdigest()  # the buffer itself: no copy


def _as_data(data) -> torch.Tensor:
    if isinstance(data, np.ndarray):
        data = torch.from_numpy(np.ascontiguousarray(data))
    if not isinstance(data, torch.Tensor):
        raise InputError(
            f"data must be a tensor (or numpy array) of training images [N, *F], got "
            f"{type(data).__name__}; pydiffgen.data.load(...) returns one"
        )
    check_tensor(data, "data", min_ndim=2)
    return data.detach().float().contiguous()


class _Conditioned:
    """``model(y, sigma, cond=labels)`` seen by the losses as a plain ``denoiser(y, sigma)``."""

    def __init__(self, model, labels):
        self.model, self.labels = model, labels

    def __call__(self, y, sigma):
        return self.model(y, sigma, cond=self.labels)


def _with_dataset_labels(data, labels, model):
    """``(images, labels)``: ``data`` may be ``data.load``'s ``(images, info)`` pair, whose
    ``info["labels"]`` a conditional model takes when no ``labels`` were given."""
    if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], dict)):
        return data, labels
    images, info = data
    if labels is None and getattr(model, "conditional", False):
        labels = info.get("labels")
        if labels is None:
            raise InputError("the model is class-conditional but the dataset has no labels; "
                             "pass labels=... (int [N], one per image)")
    return images, labels


def _as_labels(labels, model, n: int, device):
    if labels is None:
        return None
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    if (not isinstance(labels, torch.Tensor) or labels.is_floating_point()
            or labels.shape != (n,)):
        got = (f"shape {tuple(labels.shape)} dtype {labels.dtype}"
               if isinstance(labels, torch.Tensor) else type(labels).__name__)
        raise InputError(f"labels must be an int tensor of shape [{n}] (one per image), got {got}")
    k = getattr(model, "num_classes", 0)
    if not k:
        raise InputError("labels were given but the model is not class-conditional; build it "
                         "with num_classes=K (e.g. models.build('unet', num_classes=K))")
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise InputError(f"labels must lie in [0, {k}) for a model with num_classes={k}, got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    return labels.to(device=device, dtype=torch.long)


def _loss_fn(config: TrainConfig):
    from .diffusion.losses import blind_loss, denoising_loss, edm_loss

    if config.sigma_dist == "edm":
        return lambda model, x, sigma, noise: edm_loss(model, x, sigma, noise, config.sigma_data)
    if config.sigma_dist == "log-uniform":  # the error relative to the noise, ‖D(y) − x‖²/σ²
        return lambda model, x, sigma, noise: denoising_loss(model, x, sigma, noise,
                                                             sigma.float() ** -2)
    return blind_loss


def _draw_sigma(config: TrainConfig, gen, device) -> torch.Tensor:
    from .diffusion.noise import sigma_edm, sigma_kadkhodaie, sigma_log_uniform

    if config.sigma_dist == "edm":
        return sigma_edm(config.batch_size, P_mean=config.P_mean, P_std=config.P_std,
                         generator=gen, device=device)
    if config.sigma_dist == "log-uniform":
        return sigma_log_uniform(config.batch_size, sigma_min=config.sigma_min,
                                 sigma_max=config.sigma_max, generator=gen, device=device)
    return sigma_kadkhodaie(config.batch_size, sigma_max=config.sigma_max, generator=gen,
                            device=device)


@torch.no_grad()
def _update_ema(ema_model, model, decay: float) -> None:
    ema_p = [p for p in ema_model.parameters()]
    p = [q.detach() for q in model.parameters()]
    torch._foreach_lerp_(ema_p, p, 1.0 - decay)  # ema ← decay·ema + (1 − decay)·p
    for b_ema, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)  # running statistics follow the live model
