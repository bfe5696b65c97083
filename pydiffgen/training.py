"""Denoising score-matching training: Adam, lr halving, EMA, clipping, checkpoints, resume.

``train(model, data, TrainConfig(steps=..., batch_size=...), out_dir=...)``. Every step
draws, from one ``torch.Generator`` seeded with ``config.seed`` and in this order, a batch
of training indices (uniformly, with replacement), the noise levels σ and the noise n,
then minimises the loss of ``pydiffgen.diffusion.losses`` on y = x + σn:

- ``sigma_dist="kadkhodaie"``: σ = U²·sigma_max, unweighted MSE ‖D(y) − x‖² (Kadkhodaie
  et al. 2024; sigma_max = 2 for our [-1, 1] data is their σ = U² on [0, 1] images);
- ``sigma_dist="edm"``: ln σ ~ N(P_mean, P_std²) with λ(σ) = (σ² + σ_data²)/(σ σ_data)²
  (Karras et al. 2022).

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
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from ._checks import check_tensor
from .errors import CheckpointError, ConfigError, InputError, PydiffgenError
from .io import read_json, write_json

__all__ = ["TrainConfig", "TrainResult", "train"]

CHECKPOINT_FORMAT = "pydiffgen.train_checkpoint"
SIGMA_DISTS = ("kadkhodaie", "edm")
# Fields that may change between a checkpoint and its resumption: they do not change the
# math of the steps already taken (``steps`` may grow to train longer).
_RESUMABLE_FIELDS = {"steps", "checkpoint_every", "log_every", "channels_last", "compile"}
# Speed options written to checkpoints only when set, so older checkpoints still match.
_DEFAULT_OMITTED = {"label_dropout": 0.0, "channels_last": False, "autocast_cpu": False,
                    "compile": False}


@dataclass(frozen=True)
class TrainConfig:
    """How to train a denoiser. Validated on construction (``ConfigError``).

    steps:            total optimisation steps (a resumed run continues up to this number).
    batch_size:       images per step, drawn uniformly with replacement.
    lr:               Adam learning rate (paper: 1e-3).
    lr_halve_every:   halve lr every this many steps (paper: every 100 epochs); None: constant.
    sigma_dist:       "kadkhodaie" (σ = U²·sigma_max, unweighted loss) or "edm" (log-normal σ,
                      λ(σ)-weighted loss).
    sigma_max:        top of the Kadkhodaie σ range; 2 for [-1, 1] images (paper: 1 on [0, 1]).
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
) -> TrainResult:
    """Train ``model`` (``model(y, sigma) -> D``) on ``data`` [N, *F] by denoising score matching.

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
              (called ``model(y, sigma, class_labels)``, e.g. ``UNet(num_classes=K)``);
              each label is replaced by ``model.null_label`` with probability
              ``config.label_dropout``, drawn from the generator after the noise.
              Without labels the steps draw exactly what they always drew.
    distributed: data-parallel over the default process group (``torchrun``, see
              ``pydiffgen.distributed.init``) with DistributedDataParallel: every rank draws
              the whole global batch of ``config.batch_size`` from the same generator and
              keeps its slice ``distributed.shard(batch_size, rank, world)``, so R ranks
              take the same steps as one process up to float reduction order (layers with
              batch statistics, e.g. BFBatchNorm2d, see their rank's slice only). Only
              rank 0 writes checkpoints and the model; every rank returns the result.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not any(p.requires_grad for p in model.parameters()):
        raise InputError("model has no trainable parameters")
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be callable, got {type(callback).__name__}")
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("TrainConfig.device is 'cuda' but no CUDA device is available here")
    x_all = _as_data(data).to(device)  # [N, *F]
    y_all = _as_labels(labels, model, len(x_all), device)  # [N] or None
    if config.label_dropout and y_all is None:
        raise ConfigError("TrainConfig.label_dropout > 0 needs labels=... in train()")
    out_dir = Path(out_dir) if out_dir is not None else None

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
    part = slice(part.start, part.stop)  # this rank's slice of every global batch
    main = rank == 0
    model.to(device)
    channels_last = config.channels_last and x_all.ndim == 4
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    ema_model = None
    if config.ema is not None:
        ema_model = copy.deepcopy(model).requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    losses: list[float] = []
    start = 0
    if out_dir is not None and resume and (out_dir / "checkpoint.json").exists():
        start, losses = _load_checkpoint(out_dir, model, ema_model, optimizer, gen, config)
        if start > config.steps:
            raise CheckpointError(
                f"{out_dir / 'checkpoint.json'} is at step {start}, beyond the requested "
                f"steps={config.steps}; ask for at least {start} steps, use a fresh out_dir or "
                "resume=False"
            )

    ddp = None
    if world > 1:  # after the checkpoint: DDP broadcasts rank 0's state at construction
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    # the global mean loss: each rank's slice mean weighted by its share of the batch
    share = (part.stop - part.start) / config.batch_size
    loss_fn = _loss_fn(config)
    params = [p for p in model.parameters() if p.requires_grad]
    use_autocast = (config.autocast and device.type == "cuda") or (
        config.autocast_cpu and device.type == "cpu")
    forward_model = model if ddp is None else ddp
    if config.compile:
        forward_model = torch.compile(forward_model)
    fork_devices = []
    if device.type == "cuda":
        fork_devices = [device.index if device.index is not None else torch.cuda.current_device()]
    pending: list[torch.Tensor] = []  # losses not yet moved to the host

    def flush():
        if pending:
            values = torch.stack(pending)
            if ddp is not None:
                torch.distributed.all_reduce(values)  # Σ_r share_r · loss_r
            values = values.tolist()
            pending.clear()
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    bad = len(losses) + i + 1
                    raise PydiffgenError(
                        f"training diverged: the loss is {v} at step {bad}; lower TrainConfig.lr "
                        "or enable grad_clip"
                    )
            losses.extend(values)

    from tqdm.auto import tqdm

    model.train()
    n_done = 0
    t0 = time.perf_counter()
    last_saved = start if out_dir is not None and start > 0 else None
    with torch.random.fork_rng(devices=fork_devices), tqdm(
        total=config.steps, initial=start, disable=not (progress and main), desc="train",
        unit="step",
        dynamic_ncols=True,
    ) as bar:
        for step in range(start, config.steps):
            lr = config.lr
            if config.lr_halve_every is not None:
                lr = config.lr * 0.5 ** (step // config.lr_halve_every)
            for group in optimizer.param_groups:
                group["lr"] = lr
            # dropout & co. draw from the global RNG: make it a function of (seed, step)
            torch.manual_seed(config.seed * 1_000_003 + step)

            # one batch: indices, σ, noise, all from `gen` in this order
            idx = torch.randint(x_all.shape[0], (config.batch_size,), generator=gen, device=device)
            x = x_all[idx]  # [B, *F]
            sigma = _draw_sigma(config, gen, device)  # [B]
            noise = torch.randn(x.shape, generator=gen, device=device)  # [B, *F]
            x, sigma, noise = x[part], sigma[part], noise[part]
            if channels_last:  # same values, another memory layout
                x = x.contiguous(memory_format=torch.channels_last)
                noise = noise.contiguous(memory_format=torch.channels_last)
            net = forward_model
            if y_all is not None:
                lab = y_all[idx]  # [B]
                if config.label_dropout:
                    drop = torch.rand(config.batch_size, generator=gen, device=device)
                    lab = torch.where(drop < config.label_dropout, model.null_label, lab)
                net = _Conditioned(net, lab[part])

            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                loss = loss_fn(net, x, sigma, noise)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients: world·share makes that the global mean's
            (loss * (world * share) if ddp is not None else loss).backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            if ema_model is not None:
                _update_ema(ema_model, model, min(config.ema, (1 + step) / (10 + step)))
            pending.append(loss.detach() * share if ddp is not None else loss.detach())
            n_done += 1
            done = step + 1

            if callback is not None or done % config.log_every == 0 or done == config.steps:
                flush()
            if done % config.log_every == 0 or done == config.steps:
                recent = losses[-config.log_every:]
                rate = n_done * config.batch_size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4g}", img_s=f"{rate:.0f}",
                                refresh=False)
            bar.update(1)
            if out_dir is not None and config.checkpoint_every is not None and (
                done % config.checkpoint_every == 0
            ):
                flush()
                if main:
                    _save_checkpoint(out_dir, done, losses, model, ema_model, optimizer, gen,
                                     config)
                last_saved = done
            if callback is not None:
                callback(done, losses[-1], model)
        flush()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0

    steps_done = config.steps
    if out_dir is not None and main:
        if last_saved != steps_done:
            _save_checkpoint(out_dir, steps_done, losses, model, ema_model, optimizer, gen, config)
        final = ema_model if ema_model is not None else model
        if getattr(final, "config", None):
            ckpt.save_model(out_dir, final, meta={
                "weights": "ema" if ema_model is not None else "model",
                "step": steps_done,
                "train_config": config.to_dict(),
                "final_loss": losses[-1] if losses else None,
                "data_shape": list(x_all.shape[1:]),
            })
    if world > 1:
        torch.distributed.barrier()  # rank 0's files exist when train returns on any rank
    model.eval()
    if ema_model is not None:
        ema_model.eval()
    rate = n_done * config.batch_size / elapsed if n_done and elapsed > 0 else 0.0
    return TrainResult(model=model, ema=ema_model, losses=list(losses), steps=steps_done,
                       images_per_s=rate, out_dir=out_dir)


# ----------------------------------------------------------------------------------------
# pieces of a step
# ----------------------------------------------------------------------------------------


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
    """``model(y, sigma, labels)`` seen by the losses as a plain ``denoiser(y, sigma)``."""

    def __init__(self, model, labels):
        self.model, self.labels = model, labels

    def __call__(self, y, sigma):
        return self.model(y, sigma, self.labels)


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
    from .diffusion.losses import blind_loss, edm_loss

    if config.sigma_dist == "edm":
        return lambda model, x, sigma, noise: edm_loss(model, x, sigma, noise, config.sigma_data)
    return blind_loss


def _draw_sigma(config: TrainConfig, gen, device) -> torch.Tensor:
    from .diffusion.noise import sigma_edm, sigma_kadkhodaie

    if config.sigma_dist == "edm":
        return sigma_edm(config.batch_size, P_mean=config.P_mean, P_std=config.P_std,
                         generator=gen, device=device)
    return sigma_kadkhodaie(config.batch_size, sigma_max=config.sigma_max, generator=gen,
                            device=device)


@torch.no_grad()
def _update_ema(ema_model, model, decay: float) -> None:
    ema_p = [p for p in ema_model.parameters()]
    p = [q.detach() for q in model.parameters()]
    torch._foreach_lerp_(ema_p, p, 1.0 - decay)  # ema ← decay·ema + (1 − decay)·p
    for b_ema, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)  # running statistics follow the live model


# ----------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------


def _save_checkpoint(out_dir, step, losses, model, ema_model, optimizer, gen, config):
    state = optimizer.state_dict()
    tensors = ckpt.state_tensors(model, "model/")
    if ema_model is not None:
        tensors.update(ckpt.state_tensors(ema_model, "ema/"))
    opt_scalars = {}
    for i, s in state["state"].items():
        for key, value in s.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{i}/{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                opt_scalars.setdefault(str(i), {})[key] = value
    token = secrets.token_hex(8)
    ckpt.write_tensors(out_dir / "checkpoint.safetensors", tensors, token=token)
    write_json(
        out_dir / "checkpoint.json",
        {
            "format": CHECKPOINT_FORMAT,
            "version": 1,
            "token": token,
            "step": step,
            "model_config": getattr(model, "config", None),
            "train_config": config.to_dict(),
            "optimizer": {"param_groups": state["param_groups"], "scalars": opt_scalars},
            "generator_state": gen.get_state().tolist(),
            "ema": ema_model is not None,
            "torch_version": torch.__version__,
            "losses": list(losses),
        },
        indent=None,
    )


def _load_checkpoint(out_dir, model, ema_model, optimizer, gen, config):
    path = out_dir / "checkpoint.json"
    info = read_json(path)
    if not isinstance(info, dict) or info.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pydiffgen training checkpoint; use a fresh "
                              "out_dir or resume=False to overwrite it")
    fresh = "use a fresh out_dir, or resume=False to start over and overwrite it"
    saved = info.get("train_config") or {}
    now = ckpt._json_normal(config.to_dict())
    diff = sorted(k for k in set(saved) | set(now)
                  if k not in _RESUMABLE_FIELDS and saved.get(k, "<absent>") != now.get(k))
    if diff:
        details = ", ".join(f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs now {now.get(k)!r}"
                            for k in diff)
        raise CheckpointError(
            f"{path} was written by a different training config ({details}); {fresh}"
        )
    model_config = getattr(model, "config", None)
    if ckpt._json_normal(model_config) != info.get("model_config"):
        raise CheckpointError(
            f"{path} was written for a different model ({info.get('model_config')!r}, this "
            f"model is {model_config!r}); {fresh}"
        )
    try:
        step = int(info["step"])
        losses = [float(v) for v in info["losses"]]
        gen_state = torch.tensor(info["generator_state"], dtype=torch.uint8)
        groups = info["optimizer"]["param_groups"]
        scalars = info["optimizer"].get("scalars", {})
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is incomplete ({type(err).__name__}: {err}); {fresh}") \
            from None
    if len(losses) != step:
        raise CheckpointError(f"{path} is inconsistent ({len(losses)} losses for step {step}); "
                              f"{fresh}")

    tensors = ckpt.read_tensors(out_dir / "checkpoint.safetensors", token=info.get("token"),
                                token_source=path)
    sections: dict[str, dict] = {"model": {}, "ema": {}, "optim": {}}
    for key, value in tensors.items():
        head, _, rest = key.partition("/")
        if head not in sections:
            raise CheckpointError(f"{out_dir / 'checkpoint.safetensors'} has an unknown entry "
                                  f"{key!r}; {fresh}")
        sections[head][rest] = value
    source = out_dir / "checkpoint.safetensors"
    ckpt.load_state_tensors(model, sections["model"], source=source)
    if ema_model is not None:
        ckpt.load_state_tensors(ema_model, sections["ema"], source=source)

    opt_state: dict[int, dict] = {}
    for key, value in sections["optim"].items():
        i, _, name = key.partition("/")
        opt_state.setdefault(int(i), {})[name] = value
    for i, extra in scalars.items():
        opt_state.setdefault(int(i), {}).update(extra)
    for group in groups:
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model ({err}); "
                              f"{fresh}") from None
    try:
        gen.set_state(gen_state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: bad generator state ({err}); {fresh}") from None
    return step, losses
