"""``load_encoder(spec)``: every encoder by a short spec string, from local files only."""

from __future__ import annotations

import torch

from ..errors import CheckpointError, ConfigError
from .base import IMAGENET_MEAN, IMAGENET_STD, Encoder, NetworkEncoder, Preprocess, wrap
from .inception import FEATURE_DIM, INPUT_SIZE, InceptionV3
from .pretrained import transformers_encoder
from .weights import existing, load_strict, read_state_dict

#: spec → one-line description, for the CLI and error messages.
ENCODERS = {
    "pixel": "the pixels, flattened ('pixel:pool=K' averages K×K blocks first)",
    "inception:FILE": "Inception-v3 pool3 (2048-d) from a torchvision / pytorch-fid "
                      "state dict (.safetensors or .pt/.pth)",
    "dinov2:DIR": "DINOv2 CLS token from a local transformers Dinov2Model folder",
    "clip:DIR": "CLIP image CLS token from a local transformers CLIPVisionModel folder",
    "torchscript:FILE": "a TorchScript archive (e.g. SSCD); runs its code, so needs "
                        "trust_code=True / --trust-torchscript",
}


def pixel(options: str, device=None) -> NetworkEncoder:
    """Flattened pixels, after K×K average pooling with ``options`` = "pool=K"."""
    pool = 1
    if options:
        key, _, value = options.partition("=")
        if key != "pool" or not value.isdigit() or int(value) < 1:
            raise ConfigError(f"pixel encoder options: expected 'pool=K' with K >= 1, got "
                              f"{options!r}")
        pool = int(value)
    network = torch.nn.AvgPool2d(pool) if pool > 1 else torch.nn.Identity()
    return NetworkEncoder(network, name="pixel" if pool == 1 else f"pixel:pool={pool}",
                          preprocess=None, device=device)


def inception(path: str, device=None) -> NetworkEncoder:
    """Inception-v3 pool3 features; the heads are sized from the file's own keys."""
    p = existing(path, "Inception-v3 weights file",
                 "e.g. torch.save(torchvision.models.inception_v3(weights='DEFAULT')"
                 ".state_dict(), FILE), or pytorch-fid's pt_inception-2015-12-05 .pth")
    state = read_state_dict(p)
    fc = state.get("fc.weight")
    network = InceptionV3(num_classes=fc.shape[0] if fc is not None else 1000,
                          aux_logits=any(k.startswith("AuxLogits.") for k in state))
    load_strict(network, state, p)
    return NetworkEncoder(network, name=f"inception:{p.resolve()}",
                          preprocess=Preprocess(size=INPUT_SIZE, mean=(0.5,) * 3,
                                                std=(0.5,) * 3),
                          feature_dim=FEATURE_DIM, device=device)


def torchscript(path: str, device=None, trust_code: bool = False) -> NetworkEncoder:
    """A TorchScript archive fed ImageNet-normalised RGB images at their own size."""
    if not trust_code:
        raise ConfigError(f"torchscript:{path} is code as well as weights (loading it runs "
                          "it); pass trust_code=True (CLI: --trust-torchscript) only for a "
                          "file you trust")
    p = existing(path, "TorchScript archive", "saved with torch.jit.save")
    try:
        network = torch.jit.load(str(p), map_location=device or "cpu")
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{p}: not a TorchScript archive ({first})") from None
    return NetworkEncoder(network, name=f"torchscript:{p.resolve()}",
                          preprocess=Preprocess(size=None, mean=IMAGENET_MEAN,
                                                std=IMAGENET_STD),
                          device=device)


def load_encoder(spec, *, device=None, trust_code: bool = False) -> Encoder:
    """An :class:`~pydiffgen.features.Encoder` from ``spec``: a string of
    :data:`ENCODERS` (``"pixel"``, ``"pixel:pool=2"``, ``"inception:FILE"``,
    ``"dinov2:DIR"``, ``"clip:DIR"``, ``"torchscript:FILE"``), an Encoder (returned as
    is), or any ``torch.nn.Module`` / callable (wrapped; it gets the [-1, 1] images
    unchanged). Weights are read from local files only; nothing is downloaded.
    ``trust_code=True`` is required for TorchScript, whose archives hold code."""
    if isinstance(spec, Encoder):
        return spec
    if not isinstance(spec, str):
        return wrap(spec, device=device)
    name, _, arg = spec.partition(":")
    if name == "pixel":
        return pixel(arg, device)
    if name in ("inception", "dinov2", "clip", "torchscript") and not arg:
        raise ConfigError(f"encoder {name!r} needs its weights' location: "
                          f"{name}:{'DIR' if name in ('dinov2', 'clip') else 'FILE'}")
    if name == "inception":
        return inception(arg, device)
    if name in ("dinov2", "clip"):
        return transformers_encoder(arg, name, device=device)
    if name == "torchscript":
        return torchscript(arg, device, trust_code)
    raise ConfigError(f"unknown encoder {spec!r}; known: {', '.join(ENCODERS)}")
