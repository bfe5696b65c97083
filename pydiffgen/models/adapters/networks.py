"""The diffusers networks a denoiser can wrap, and how each takes its condition.

``cond`` (the :class:`~pydiffgen.models.base.Denoiser` contract) reaches the network as
  - ``UNet2DModel`` with ``class_embed_type`` / ``num_class_embeds``: ``class_labels``;
  - ``UNet2DConditionModel``: ``encoder_hidden_states`` (text embeddings [B, L, E]);
  - ``DiTTransformer2DModel``, class-label ``Transformer2DModel``: ``class_labels`` [B];
    text ``Transformer2DModel`` (``cross_attention_dim``): ``encoder_hidden_states``;
  - a dict: its ``encoder_hidden_states`` / ``class_labels`` / ``encoder_attention_mask``
    as those arguments, every other key in ``added_cond_kwargs`` (e.g. SDXL's
    ``text_embeds`` and ``time_ids``).
"""

from __future__ import annotations

import torch

from ...errors import CheckpointError

NETWORKS = ("UNet2DModel", "UNet2DConditionModel", "DiTTransformer2DModel",
            "Transformer2DModel")
ARGUMENTS = ("encoder_hidden_states", "class_labels", "encoder_attention_mask")


def check_network(kind: str | None, where) -> None:
    """CheckpointError unless ``kind`` (a config's ``_class_name``) is a network here."""
    if kind not in NETWORKS:
        raise CheckpointError(f"{where}: network {kind or '(no _class_name)'} is not "
                              f"supported; supported: {', '.join(NETWORKS)}")


def condition_kind(net) -> str | None:
    """What ``net`` is conditioned on: "classes", "text" or None (unconditional)."""
    kind, cfg = type(net).__name__, net.config
    if kind == "UNet2DModel":
        labelled = cfg.get("class_embed_type") is not None or cfg.get("num_class_embeds")
        return "classes" if labelled else None
    if kind == "UNet2DConditionModel":
        return "text"
    if kind == "DiTTransformer2DModel" or cfg.get("num_embeds_ada_norm") is not None:
        return "classes"
    return "text" if cfg.get("cross_attention_dim") is not None else None


def null_class(net) -> torch.Tensor | None:
    """The label [1] a class-conditional transformer reserves for "no class" (DiT's label
    dropout row, index ``num_embeds_ada_norm``, as DiTPipeline uses for guidance); None
    for UNet2DModel, whose label embedding has no such row."""
    if type(net).__name__ == "UNet2DModel":
        return None
    return torch.tensor([int(net.config.num_embeds_ada_norm)])


def data_shape(net) -> list[int]:
    """[C, H, W] of the images (or latents) ``net`` denoises, from its config."""
    cfg = net.config
    size = cfg.get("sample_size")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return [int(cfg.in_channels), *map(int, hw)]


def run_network(net, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
    """The network's output [B, C', H, W] at input x [B, C, H, W], time t [B] and ``cond``
    (already batch B, or None for an unconditional network)."""
    if cond is None:
        kwargs = {}
    elif isinstance(cond, dict):
        kwargs = {k: v for k, v in cond.items() if k in ARGUMENTS}
        extra = {k: v for k, v in cond.items() if k not in ARGUMENTS}
        if extra:
            kwargs["added_cond_kwargs"] = extra
    elif condition_kind(net) == "text":
        kwargs = {"encoder_hidden_states": cond.to(x.dtype)}
    else:
        kwargs = {"class_labels": cond}
    if type(net).__name__.startswith("UNet"):
        return net(x, t, return_dict=False, **kwargs)[0]
    return net(x, timestep=t, return_dict=False, **kwargs)[0]
