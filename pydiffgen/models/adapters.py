"""Adapters: denoisers trained elsewhere, behind pydiffgen's ``D(y; σ)`` interface.

:class:`DiffusersDenoiser` wraps a diffusers ``UNet2DModel`` trained with a discrete
DDPM-style schedule (ε-, x0- or v-prediction) as a variance-exploding σ-denoiser, so every
pydiffgen sampler and analysis can use it. diffusers is optional
(``pip install "pydiffgen[diffusers]"``); weights are read from safetensors only.

Derivation (VP ↔ VE; Song et al. 2021, Karras et al. 2022 §2). A DDPM forward process at
discrete step t has x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, ε ~ N(0, I). Dividing by √ᾱ_t,

    y = x_t/√ᾱ_t = x0 + σ_t·ε,   σ_t = √((1−ᾱ_t)/ᾱ_t),

a VE sample of noise level σ_t. Conversely, for any σ ≥ 0 set ᾱ(σ) = 1/(1+σ²), so
x_t = √ᾱ·y = y/√(1+σ²). The network was trained on the discrete σ_0 < … < σ_{T−1}; a
continuous σ gets the fractional timestep t(σ) found by linear interpolation of log σ_t
over t (k-diffusion's DiscreteSchedule; the sinusoidal time embedding of UNet2DModel takes
fractional t), clamped to [0, T−1]. With ε̂ = net(√ᾱ·y, t(σ)) the posterior-mean estimate
(Tweedie / DDPM Eq. 15) is, per prediction type:

    epsilon:       D(y; σ) = (x_t − √(1−ᾱ)·ε̂)/√ᾱ = y − σ·ε̂
    sample:        D(y; σ) = net output
    v_prediction:  D(y; σ) = √ᾱ·x_t − √(1−ᾱ)·v̂ = ᾱ·y − √(1−ᾱ)·v̂

At the scheduler's own timesteps this is exactly the scheduler's x0-prediction
(``pred_original_sample`` of ``DDPMScheduler.step`` without clipping).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, InputError
from .base import Denoiser

__all__ = ["DiffusersDenoiser", "is_diffusers_dir"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# Schedulers whose training noise is DDPM's: ᾱ_t from the same beta-schedule fields
# (num_train_timesteps, beta_start/end, beta_schedule, trained_betas); their sampling
# options do not change ᾱ_t. Others (EDMEulerScheduler, ScoreSdeVeScheduler, ...) define
# σ differently and cannot be read this way.
DDPM_FAMILY = (
    "DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
)


def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise ConfigError(
            "diffusers models need the optional dependency diffusers: "
            "pip install 'pydiffgen[diffusers]'"
        ) from None
    return diffusers


def _layout(path) -> tuple[Path, str | None, Path]:
    """(root, unet subfolder or None, scheduler config file) of a diffusers folder: a
    pipeline (``unet/`` + ``scheduler/``) or a UNet folder holding its scheduler config."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory holding a diffusers model")
    if (root / "unet" / "config.json").is_file():
        return root, "unet", root / "scheduler" / "scheduler_config.json"
    if (root / "config.json").is_file():
        return root, None, root / "scheduler_config.json"
    raise CheckpointError(
        f"{root} holds no diffusers UNet (expected unet/config.json + scheduler/ or "
        "config.json + scheduler_config.json)"
    )


def is_diffusers_dir(path) -> bool:
    """True when ``path`` looks like a diffusers pipeline or UNet folder."""
    try:
        _layout(path)
    except CheckpointError:
        return False
    return True


class DiffusersDenoiser(Denoiser):
    """A diffusers ``UNet2DModel`` + DDPM schedule as a VE denoiser D(y [B, C, H, W]; σ [B]).

    ``alphas_cumprod`` [T]: ᾱ_t of the discrete schedule (increasing σ_t required);
    ``prediction_type``: what the network predicts (module docstring). ``sigma_min`` /
    ``sigma_max`` are the schedule's σ_0 and σ_{T−1}: outside them t(σ) is clamped, the
    input scaling 1/√(1+σ²) is not. ``meta["data_shape"]`` is (C, H, W) of the model.
    """

    def __init__(self, unet: torch.nn.Module, alphas_cumprod, prediction_type: str = "epsilon",
                 source: str | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                              f"got {prediction_type!r}")
        super().__init__(prediction_type=prediction_type, source=source)
        # not in the MODELS registry: the weights live in diffusers' files, not in ours
        self.config["name"] = "diffusers"
        self.unet = unet
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if abar.numel() < 2 or not bool(((abar > 0) | (abar == 0)).all() & (abar <= 1).all()):
            raise ConfigError("alphas_cumprod must hold at least 2 values in [0, 1]")
        # zero-terminal-SNR schedules end at ᾱ = 0 (σ = ∞): keep log σ finite there
        sigmas = ((1 - abar) / abar.clamp_min(1e-20)).sqrt()  # [T]
        log_sigmas = sigmas.clamp_min(1e-20).log()
        if not bool((log_sigmas[1:] > log_sigmas[:-1]).all()):
            raise ConfigError("alphas_cumprod must decrease strictly (σ_t increasing in t)")
        self.register_buffer("log_sigmas", log_sigmas, persistent=False)  # [T] float64
        self.prediction_type = prediction_type
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])
        size = getattr(getattr(unet, "config", None), "sample_size", None)
        channels = getattr(getattr(unet, "config", None), "in_channels", None)
        shape = None
        if channels is not None and size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            shape = [int(channels), *map(int, hw)]
        self.meta = {"data_shape": shape, "source": source}

    @classmethod
    def from_pretrained(cls, path, *, device="cpu") -> DiffusersDenoiser:
        """Load a UNet2DModel (safetensors only) and its scheduler config from ``path``."""
        diffusers = _import_diffusers()
        root, subfolder, sched_file = _layout(path)
        unet_cfg = json.loads(((root / subfolder) if subfolder else root).joinpath(
            "config.json").read_text())
        if unet_cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
            raise CheckpointError(
                f"{root}: only unconditional UNet2DModel denoisers are supported, found "
                f"{unet_cfg.get('_class_name')}"
            )
        if not sched_file.is_file():
            raise CheckpointError(f"{root}: no scheduler config at {sched_file}")
        # diffusers logs every scheduler-config key DDPMScheduler does not use; say less
        verbosity = diffusers.utils.logging.get_verbosity()
        diffusers.utils.logging.set_verbosity_error()
        try:
            sched_cfg = json.loads(sched_file.read_text())
            kind = sched_cfg.get("_class_name") if isinstance(sched_cfg, dict) else None
            if kind not in DDPM_FAMILY:
                raise CheckpointError(
                    f"{sched_file}: scheduler {kind or '(no _class_name)'} cannot be mapped "
                    f"exactly to noise levels σ; supported: {', '.join(DDPM_FAMILY)}")
            # every DDPM-family scheduler derives ᾱ_t from the same beta-schedule fields
            scheduler = diffusers.DDPMScheduler.from_config(sched_cfg)
            unet = diffusers.UNet2DModel.from_pretrained(
                str(root), subfolder=subfolder, use_safetensors=True, local_files_only=True,
                low_cpu_mem_usage=False,
            )
        except (OSError, ValueError, KeyError, NotImplementedError) as err:
            raise CheckpointError(f"{root}: cannot load the diffusers model "
                                  f"({type(err).__name__}: {err})") from None
        finally:
            diffusers.utils.logging.set_verbosity(verbosity)
        prediction = sched_cfg.get("prediction_type", "epsilon")
        return cls(unet.eval(), scheduler.alphas_cumprod, prediction, source=str(root)).to(device)

    # -- the σ ↔ t map -------------------------------------------------------------------

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of σ [B]: linear in log σ between discrete steps, in [0, T−1]."""
        ls = self.log_sigmas
        log_sigma = sigma.to(ls).log()  # σ = 0 → −inf → t = 0
        hi = torch.searchsorted(ls, log_sigma).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = ((log_sigma - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return lo.to(ls.dtype) + w  # [B] float64

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ of a fractional timestep t [B] in [0, T−1] (the inverse of :meth:`sigma_to_t`)."""
        ls = self.log_sigmas
        t = t.to(ls).clamp(0, len(ls) - 1)
        lo = t.floor().long().clamp(max=len(ls) - 2)
        w = t - lo
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    # -- the denoiser --------------------------------------------------------------------

    def forward(self, y: torch.Tensor, sigma) -> torch.Tensor:
        if y.ndim != 4:
            raise InputError(f"y must be [B, C, H, W], got shape {tuple(y.shape)}")
        sigma = torch.as_tensor(sigma, device=y.device, dtype=torch.float64)
        if sigma.ndim == 0:
            sigma = sigma.expand(len(y))
        if sigma.shape != (len(y),):
            raise InputError(f"sigma must be a float or [B={len(y)}], got {tuple(sigma.shape)}")
        if bool((sigma < 0).any()):
            raise InputError("sigma must be non-negative")
        abar = 1 / (1 + sigma.square())  # [B]: ᾱ(σ) of the VP process
        c = abar.sqrt()[:, None, None, None]
        dtype = next(self.unet.parameters()).dtype
        x_t = (c * y.double()).to(dtype)  # x_t = √ᾱ·y
        t = self.sigma_to_t(sigma).to(torch.float32)
        out = self.unet(x_t, t, return_dict=False)[0].double()
        out = out[:, : y.shape[1]]  # learned-variance models append Σ channels
        s = sigma[:, None, None, None]
        if self.prediction_type == "epsilon":
            D = y.double() - s * out  # D = y − σ·ε̂
        elif self.prediction_type == "sample":
            D = out
        else:  # D = ᾱ·y − √(1−ᾱ)·v̂
            a = abar[:, None, None, None]
            D = a * y.double() - (1 - a).sqrt() * out
        return D.to(y.dtype)
