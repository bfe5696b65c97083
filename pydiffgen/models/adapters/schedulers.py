"""A diffusers scheduler's config read as noise levels σ, exactly, or refused.

Every mapped scheduler gives a *schedule*: how a VE sample y = x0 + σ·n (σ ≥ 0) enters the
network (``inputs``: its input x and time t) and how the network's output gives the
posterior mean D(y; σ) (``denoised``). Three families are exact:

**ᾱ schedules** (:class:`DiscreteVP`: DDPM, DDIM, Euler, DPM-Solver, ...; Song et al. 2021,
Karras et al. 2022 §2). A DDPM forward process has x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε; dividing by
√ᾱ_t, y = x_t/√ᾱ_t = x0 + σ_t·ε with σ_t = √((1−ᾱ_t)/ᾱ_t). For any σ, ᾱ(σ) = 1/(1+σ²)
and x_t = y/√(1+σ²); the network takes the fractional timestep t(σ) found by linear
interpolation of log σ_t over t (k-diffusion's DiscreteSchedule, as Euler's ``_sigma_to_t``),
clamped to [0, T−1]; or 0.25·log σ where the config asks for continuous time (Euler with
``timestep_type="continuous"`` and v-prediction). Per prediction type:

    epsilon:       D(y; σ) = y − σ·ε̂
    sample:        D(y; σ) = net output
    v_prediction:  D(y; σ) = ᾱ·y − √(1−ᾱ)·v̂

clamped to [−r, r] where the config clips (``clip_sample``, range r): at the scheduler's
own timesteps this is its ``pred_original_sample``.

**EDM** (:class:`EDM`: EDMEulerScheduler, EDMDPMSolverMultistepScheduler; Karras et al.
2022 Eq. 7): D = c_skip·y + c_out·F(c_in·y; c_noise) with c_skip = σ_d²/(σ²+σ_d²),
c_out = ±σσ_d/√(σ²+σ_d²) (− for v-prediction), c_in = 1/√(σ²+σ_d²), c_noise = ¼ log σ.

**Score SDE VE** (:class:`VarianceExploding`: ScoreSdeVeScheduler; Song et al. 2021): the
network takes (y, σ) and gives the score s = ∇ log p_σ(y), so D = y + σ²·s (Tweedie).

Anything else (other schedulers, dynamic thresholding, flow-matching σ's, an unknown
prediction type, a terminal ᾱ = 0 where σ = ∞) raises ConfigError naming it: a schedule
is never read as a DDPM default.
"""

from __future__ import annotations

import torch

from ...errors import ConfigError

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
# ᾱ schedules whose σ table is their ``sigmas`` after set_timesteps (last: the final σ);
# DDPM and DDIM step over timesteps instead
ALPHA_BAR_SIGMAS = (
    "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
    "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
)
# these train on ᾱ_t from the beta-schedule fields but step through repeated or
# interleaved timesteps (no single σ table), so they give a denoiser but no ``sigmas``
ALPHA_BAR_ONLY = ("PNDMScheduler", "HeunDiscreteScheduler", "KDPM2DiscreteScheduler",
                  "KDPM2AncestralDiscreteScheduler")
EDM_FAMILY = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")
SUPPORTED = ("DDPMScheduler", "DDIMScheduler", *ALPHA_BAR_SIGMAS, *ALPHA_BAR_ONLY,
             *EDM_FAMILY, "ScoreSdeVeScheduler")

def _rows(v: torch.Tensor) -> torch.Tensor:
    """[B] → [B, 1, 1, 1] to scale images."""
    return v[:, None, None, None]


class DiscreteVP:
    """A discrete ᾱ_t schedule (``alphas_cumprod`` [T], σ_t increasing) as σ ↔ t.

    ``clip_range``: clamp D to [−r, r] (the scheduler's ``clip_sample``); ``continuous_time``:
    the network's time is 0.25·log σ instead of t(σ).
    """

    def __init__(self, alphas_cumprod, prediction_type: str = "epsilon", *,
                 clip_range: float | None = None, continuous_time: bool = False):
        if prediction_type not in PREDICTION_TYPES:
            raise ConfigError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, "
                              f"got {prediction_type!r}")
        abar = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten().cpu()
        if abar.numel() < 2 or not bool(((abar > 0) & (abar <= 1)).all()):
            raise ConfigError("alphas_cumprod must hold at least 2 values in (0, 1] (a "
                              "terminal ᾱ = 0, as rescale_betas_zero_snr gives, is σ = ∞)")
        sigmas = ((1 - abar) / abar).sqrt()  # [T]
        self.log_sigmas = sigmas.clamp_min(1e-20).log()  # [T] float64, on the CPU
        if not bool((self.log_sigmas[1:] > self.log_sigmas[:-1]).all()):
            raise ConfigError("alphas_cumprod must decrease strictly (σ_t increasing in t)")
        self.prediction_type = prediction_type
        self.clip_range = clip_range
        self.continuous_time = continuous_time
        self.sigma_min, self.sigma_max = float(sigmas[0]), float(sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time for σ [B]: t(σ) in [0, T−1] (linear in log σ between steps)."""
        if self.continuous_time:  # σ = 0 kept finite, as in EDM below
            return 0.25 * sigma.double().clamp_min(1e-20).log()
        ls = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.to(ls).log()  # σ = 0 → −inf → t = 0
        hi = torch.searchsorted(ls, log_sigma).clamp(1, len(ls) - 1)
        lo = hi - 1
        w = ((log_sigma - ls[lo]) / (ls[hi] - ls[lo])).clamp(0, 1)
        return lo.to(ls.dtype) + w  # [B] float64

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ of the network's time t [B] (the inverse of :meth:`sigma_to_t`)."""
        if self.continuous_time:
            return (4 * t.double()).exp()
        ls = self.log_sigmas.to(t.device)
        t = t.to(ls).clamp(0, len(ls) - 1)
        lo = t.floor().long().clamp(max=len(ls) - 2)
        w = t - lo
        return ((1 - w) * ls[lo] + w * ls[lo + 1]).exp()

    def inputs(self, y: torch.Tensor, sigma: torch.Tensor):
        """(x_t = y/√(1+σ²) [B, C, H, W], t [B]) for the network; float64 in, float64 out."""
        return y / _rows(1 + sigma.square()).sqrt(), self.sigma_to_t(sigma)

    def denoised(self, y: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """D(y; σ) [B, C, H, W] from the network output ``out`` (module docstring)."""
        s = _rows(sigma)
        if self.prediction_type == "epsilon":
            D = y - s * out
        elif self.prediction_type == "sample":
            D = out
        else:
            abar = 1 / (1 + s.square())
            D = abar * y - (1 - abar).sqrt() * out
        return D if self.clip_range is None else D.clamp(-self.clip_range, self.clip_range)


class EDM:
    """Karras et al.'s preconditioning with the scheduler's σ_min, σ_max, σ_data."""

    def __init__(self, sigma_min: float, sigma_max: float, sigma_data: float,
                 prediction_type: str = "epsilon"):
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"EDM schedulers predict epsilon or v_prediction, got "
                              f"{prediction_type!r}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sigma_data, self.prediction_type = float(sigma_data), prediction_type

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """c_noise = ¼ log σ [B] (σ = 0 kept finite: there c_out = 0 and D = y)."""
        return 0.25 * sigma.double().clamp_min(1e-20).log()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (4 * t.double()).exp()

    def inputs(self, y: torch.Tensor, sigma: torch.Tensor):
        c_in = 1 / (sigma.square() + self.sigma_data**2).sqrt()
        return y * _rows(c_in), self.sigma_to_t(sigma)

    def denoised(self, y: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        sd2, s = self.sigma_data**2, _rows(sigma)
        c_skip = sd2 / (s.square() + sd2)
        c_out = s * self.sigma_data / (s.square() + sd2).sqrt()
        return c_skip * y + (c_out if self.prediction_type == "epsilon" else -c_out) * out


class VarianceExploding:
    """Score SDE VE: the network is the score s(y, σ) (it takes σ itself as its time)."""

    prediction_type = "score"

    def __init__(self, sigma_min: float, sigma_max: float):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """t = σ [B] (σ = 0 kept positive: there σ²·s = 0 and D = y)."""
        return sigma.double().clamp_min(1e-20)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return t.double()

    def inputs(self, y: torch.Tensor, sigma: torch.Tensor):
        return y, self.sigma_to_t(sigma)

    def denoised(self, y: torch.Tensor, sigma: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return y + _rows(sigma.square()) * out  # Tweedie: D = y + σ²·∇ log p


def schedule_of(scheduler, *, clip_sample: bool | None = None):
    """The schedule of an instantiated diffusers ``scheduler``; ConfigError naming its class
    and the option where it cannot be mapped exactly. ``clip_sample``: None follows the
    config (DDPM/DDIM clip by default), False/True turn clamping of D off/on."""
    kind, cfg = type(scheduler).__name__, scheduler.config
    if kind not in SUPPORTED:
        raise ConfigError(f"scheduler {kind} cannot be mapped exactly to noise levels σ; "
                          f"supported: {', '.join(SUPPORTED)}")
    if kind == "ScoreSdeVeScheduler":
        return VarianceExploding(cfg.sigma_min, cfg.sigma_max)
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ConfigError(f"scheduler {kind}: prediction_type {prediction!r} cannot be mapped "
                          f"to σ; supported: {', '.join(PREDICTION_TYPES)}")
    for option in ("thresholding", "use_flow_sigmas"):
        if cfg.get(option, False):
            raise ConfigError(f"scheduler {kind}: {option}=True changes the prediction or σ in "
                              "a way pydiffgen cannot map exactly")
    if kind in EDM_FAMILY:
        return EDM(cfg.sigma_min, cfg.sigma_max, cfg.sigma_data, prediction)
    clip = cfg.get("clip_sample", False) if clip_sample is None else clip_sample
    try:
        return DiscreteVP(
            scheduler.alphas_cumprod, prediction,
            clip_range=float(cfg.get("clip_sample_range", 1.0)) if clip else None,
            continuous_time=(cfg.get("timestep_type") == "continuous"
                             and prediction == "v_prediction"))
    except ConfigError as err:
        raise ConfigError(f"scheduler {kind}: {err}") from None


def scheduler_sigmas(scheduler, schedule, num_steps: int) -> torch.Tensor:
    """The σ's [K] float64 (decreasing) at which ``scheduler`` would sample in
    ``num_steps`` steps, ending at its final σ (0 where it ends clean), for the ``sigmas=``
    of pydiffgen's samplers. ConfigError where its network times are not those σ's."""
    kind = type(scheduler).__name__
    if kind in ALPHA_BAR_ONLY:
        raise ConfigError(f"scheduler {kind} steps through repeated or interleaved "
                          "timesteps: no single σ table; give sigmas of your own")
    scheduler.set_timesteps(int(num_steps))
    abar = scheduler.alphas_cumprod.double() if hasattr(scheduler, "alphas_cumprod") else None
    if kind == "DDPMScheduler":
        t = scheduler.timesteps.long()
        return torch.cat([((1 - abar[t]) / abar[t]).sqrt(), torch.zeros(1, dtype=abar.dtype)])
    if kind == "DDIMScheduler":  # each step goes from t to t − T/n (ᾱ = final below 0)
        t = scheduler.timesteps.long()
        prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        if not torch.equal(prev[:-1], t[1:]):
            raise ConfigError(f"scheduler {kind}: with timestep_spacing="
                              f"{scheduler.config.timestep_spacing!r} its steps do not land "
                              "on its timesteps; no exact σ table")
        final = (abar[prev[-1]] if prev[-1] >= 0
                 else torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64))
        abar = torch.cat([abar[t], final.reshape(1)])
        return ((1 - abar) / abar).sqrt()
    if kind == "ScoreSdeVeScheduler":
        scheduler.set_sigmas(int(num_steps))  # its predictor ends at σ_min, then clean
        return torch.cat([scheduler.sigmas.double(), torch.zeros(1, dtype=torch.float64)])
    sigmas = scheduler.sigmas.double().cpu()
    times = scheduler.timesteps.double().cpu()
    if not torch.allclose(schedule.sigma_to_t(sigmas[: len(times)]), times, atol=1e-3):
        raise ConfigError(f"scheduler {kind}: with this config it runs the network at "
                          "timesteps other than its σ's (rounded or re-spaced); no exact σ table")
    return sigmas
