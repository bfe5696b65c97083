"""The :class:`Encoder` protocol and the two ways to build one from a network.

An encoder maps images ``[B, C, H, W]`` in pydiffgen's [-1, 1] convention to features
``[B, F]`` float32. It owns its preprocessing (resize, grey → RGB, the network's own
normalisation), so callers never need to know what the network was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .._checks import check_tensor
from ..data.transforms import resize
from ..errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Encoder(Protocol):
    """Images ``[B, C, H, W]`` float in [-1, 1] → features ``[B, F]`` float32.

    ``name`` identifies the encoder and its weights (feature caches are keyed by it);
    ``input_size`` is the side the images are resized to (None: kept as given);
    ``feature_dim`` is F (None until known, for a wrapped callable).
    """

    name: str
    input_size: int | None
    feature_dim: int | None

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...


def check_images(x, name: str) -> torch.Tensor:
    """``x`` must be a float ``[N, C, H, W]`` tensor with every value in [-1, 1]."""
    if isinstance(x, torch.Tensor) and x.dtype == torch.uint8:
        raise InputError(f"{name} is uint8; expected float images in [-1, 1] "
                         "(convert with x.float() / 127.5 - 1)")
    check_tensor(x, name, ndim=4)
    # row chunks: no temporary the size of a dataset
    rows = max(1, (1 << 22) // max(1, x[0].numel()))
    lo = min(float(c.min()) for c in x.split(rows))
    hi = max(float(c.max()) for c in x.split(rows))
    if lo < -1 or hi > 1:
        raise InputError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; expected images in "
                         "[-1, 1] (2·x − 1 for [0, 1] images, x / 127.5 − 1 for uint8)")
    return x


@dataclass(frozen=True)
class Preprocess:
    """[-1, 1] images → the network's input: grey repeated to ``channels``, resized to
    ``size × size`` (bilinear, antialiased when shrinking), then ``(x − mean) / std`` per
    channel on [0, 1] intensities."""

    size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channels: int = 3

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        unit = (images.float() + 1) / 2  # [B, C, H, W] in [0, 1]
        if unit.shape[1] == 1 and self.channels != 1:
            unit = unit.expand(-1, self.channels, -1, -1)
        if unit.shape[1] != self.channels:
            raise InputError(f"images have {unit.shape[1]} channels; this encoder takes 1 or "
                             f"{self.channels}")
        if self.size is not None:
            unit = resize(unit.contiguous(), self.size, "bilinear")
        mean = unit.new_tensor(self.mean).view(1, -1, 1, 1)
        std = unit.new_tensor(self.std).view(1, -1, 1, 1)
        return (unit - mean) / std


class NetworkEncoder:
    """A network behind :class:`Encoder`: ``features(network, preprocess(images)) → [B, F]``.

    The network is put in eval mode on ``device``; ``encode`` runs without autograd and
    returns float32 features on that device.
    """

    def __init__(self, network, *, name: str, preprocess: Preprocess | None, features=None,
                 feature_dim: int | None = None, device=None):
        self.network = network.eval() if isinstance(network, torch.nn.Module) else network
        if device is not None and isinstance(network, torch.nn.Module):
            self.network = self.network.to(device)
        self.device = torch.device(device) if device is not None else _device_of(network)
        self.name = name
        self.preprocess = preprocess
        self.input_size = preprocess.size if preprocess is not None else None
        self.features = features if features is not None else (lambda net, x: net(x))
        self.feature_dim = feature_dim

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, C, H, W]`` in [-1, 1] → ``[B, F]`` float32."""
        check_images(images, "images")
        x = images.to(self.device)
        if self.preprocess is not None:
            x = self.preprocess(x)
        with torch.inference_mode():
            out = self.features(self.network, x)
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != len(images):
            raise InputError(f"encoder {self.name} returned "
                             f"{getattr(out, 'shape', type(out).__name__)}; expected one "
                             f"feature row per image ({len(images)})")
        out = out.reshape(len(images), -1).float()
        if self.feature_dim is None:
            self.feature_dim = out.shape[1]
        return out

    def __repr__(self) -> str:
        return f"NetworkEncoder({self.name!r}, input_size={self.input_size}, " \
               f"feature_dim={self.feature_dim})"


def _device_of(network) -> torch.device:
    if isinstance(network, torch.nn.Module):
        p = next(network.parameters(), None)
        if p is not None:
            return p.device
    return torch.device("cpu")


def wrap(fn, *, name: str | None = None, device=None) -> NetworkEncoder:
    """Any ``torch.nn.Module`` or callable mapping images ``[B, C, H, W]`` in [-1, 1]
    to ``[B, ...]`` as an :class:`Encoder` (outputs are flattened to ``[B, F]``). It is
    given the images unchanged: the callable owns its preprocessing. ``name`` (default:
    the callable's ``name`` attribute or qualified class/function name) keys caches."""
    if not callable(fn):
        raise InputError(f"encoder must be a spec string, an Encoder, a torch.nn.Module or a "
                         f"callable, got {type(fn).__name__}")
    if name is None:
        name = getattr(fn, "name", None)
    if not isinstance(name, str):
        kind = fn if not isinstance(fn, torch.nn.Module) and hasattr(fn, "__qualname__") \
            else type(fn)
        name = f"callable:{kind.__module__}.{kind.__qualname__}"
    return NetworkEncoder(fn, name=name, preprocess=None, device=device)
