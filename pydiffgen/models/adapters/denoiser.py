"""A diffusers network and its scheduler's σ map behind D(y, σ, cond).

:class:`DiffusersDenoiser` wraps a network (``networks``) with the schedule its scheduler
config defines (``schedulers``): D(y; σ) is the posterior mean of the VE sample
y = x0 + σ·n, so every pydiffgen sampler and analysis runs on it unchanged. A latent model
carries its autoencoder (``encode`` / ``decode``, module ``latent``), a text-conditional
pipeline its prompt encoder (``embed_prompts``, module ``text``).
"""

from __future__ import annotations

import torch

from ...diffusion.guidance import expand_cond
from ...errors import ConfigError, InputError
from ..base import Denoiser
from .latent import LatentCodec
from .networks import condition_kind, data_shape, null_class, run_network
from .schedulers import scheduler_sigmas
from .text import PromptEncoder


class DiffusersDenoiser(Denoiser):
    """A diffusers ``net`` under ``schedule`` as D(y [B, C, H, W], σ [B], cond=None).

    ``schedule``: a ``schedulers`` schedule (:class:`~.schedulers.DiscreteVP`, ``EDM``,
    ``VarianceExploding``); ``scheduler``: the diffusers scheduler it came from (for
    :meth:`scheduler_sigmas`); ``codec``: the autoencoder of a latent model; ``prompts``:
    the prompt encoder of a text-conditional pipeline. ``sigma_min`` / ``sigma_max``: the
    schedule's σ range (outside it a discrete schedule's time is clamped, its input
    scaling is not). ``meta["data_shape"]``: [C, H, W] the network denoises (latents for
    a latent model; ``meta["pixel_shape"]`` then gives the images').
    """

    def __init__(self, net: torch.nn.Module, schedule, *, scheduler=None,
                 codec: LatentCodec | None = None, prompts: PromptEncoder | None = None,
                 source: str | None = None):
        super().__init__(prediction_type=schedule.prediction_type, source=source)
        # not in the MODELS registry: the weights live in diffusers' files, not in ours
        self.config["name"] = "diffusers"
        self.net, self.schedule, self.scheduler = net, schedule, scheduler
        self.codec, self.prompts = codec, prompts
        self.condition = condition_kind(net)
        self.conditional = self.condition is not None
        self.latent = codec is not None
        self.prediction_type = schedule.prediction_type
        self.sigma_min, self.sigma_max = schedule.sigma_min, schedule.sigma_max
        shape = data_shape(net)
        self.meta = {"data_shape": shape, "source": source}
        if codec is not None:
            self.meta["pixel_shape"] = codec.pixel_shape(shape)

    @property
    def null_cond(self):
        """"No condition" as a batch of one: DiT's null class [1], the empty prompt's
        embeddings [1, L, E]; None where the model defines none (unconditional models,
        class-conditional UNet2DModel, text models without their text encoder)."""
        if self.condition == "text":
            return None if self.prompts is None else self.prompts.embed([""])
        if self.condition == "classes":
            label = null_class(self.net)
            return None if label is None else label.to(next(self.net.parameters()).device)
        return None

    # -- what the scheduler and the pipeline's other parts give ----------------------------

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time [B] float64 for σ [B] (e.g. DDPM's fractional timestep)."""
        return self.schedule.sigma_to_t(sigma)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ [B] float64 of the network's time t [B] (inverse of :meth:`sigma_to_t`)."""
        return self.schedule.t_to_sigma(t)

    def scheduler_sigmas(self, num_steps: int) -> torch.Tensor:
        """The σ's [K] float64 the scheduler would sample at in ``num_steps`` steps, ending
        at its final σ: the ``sigmas=`` of pydiffgen's samplers to retrace its run."""
        if self.scheduler is None:
            raise ConfigError("this denoiser was built without its diffusers scheduler")
        return scheduler_sigmas(self.scheduler, self.schedule, num_steps)

    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings [len(prompts), L, E] for ``cond=`` (cached per prompt)."""
        if self.prompts is None:
            raise InputError("this model has no text encoder; pass embeddings as cond")
        return self.prompts.embed(list(prompts))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents z [B, c, h, w] of images x [B, C, H, W] in [−1, 1] (latent models)."""
        return self._codec().encode(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] of latents z [B, c, h, w] (latent models)."""
        return self._codec().decode(z)

    def _codec(self) -> LatentCodec:
        if self.codec is None:
            raise InputError("this model works on pixels: it has no encode/decode")
        return self.codec

    # -- the denoiser ----------------------------------------------------------------------

    def forward(self, y: torch.Tensor, sigma, cond=None) -> torch.Tensor:
        if y.ndim != 4:
            raise InputError(f"y must be [B, C, H, W], got shape {tuple(y.shape)}")
        sigma = torch.as_tensor(sigma, device=y.device, dtype=torch.float64)
        if sigma.ndim == 0:
            sigma = sigma.expand(len(y))
        if sigma.shape != (len(y),):
            raise InputError(f"sigma must be a float or [B={len(y)}], got {tuple(sigma.shape)}")
        if bool((sigma < 0).any()):
            raise InputError("sigma must be non-negative")
        cond = self._batch_cond(cond, len(y), y.device)
        x_in, t = self.schedule.inputs(y.double(), sigma)
        dtype = next(self.net.parameters()).dtype
        t = t.to(torch.float64 if dtype == torch.float64 else torch.float32)
        out = run_network(self.net, x_in.to(dtype), t, cond).double()
        out = out[:, : y.shape[1]]  # learned-variance models append Σ channels
        return self.schedule.denoised(y.double(), sigma, out).to(y.dtype)

    def _batch_cond(self, cond, n: int, device):
        """``cond`` for a batch of n on ``device``; None means the null condition."""
        if not self.conditional:
            if cond is not None:
                raise InputError("this diffusers model is unconditional: cond must be None")
            return None
        if cond is None:
            cond = self.null_cond
            if cond is None:
                raise InputError("this model defines no null condition: give cond=")
        if isinstance(cond, dict):
            cond = {k: v.to(device) for k, v in cond.items()}
        else:
            cond = torch.as_tensor(cond).to(device)
        return expand_cond(cond, n)
