"""DINOv2 and CLIP image encoders from a local transformers folder (safetensors only).

Features are the class token: ``Dinov2Model``'s layer-normed CLS (``pooler_output``,
the embedding dgm-eval uses) and ``CLIPVisionModel``'s post-layer-norm CLS
(``pooler_output``). The input size and normalisation come from the folder's
``preprocessor_config.json`` when it has one, else the family's standard values.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .base import IMAGENET_MEAN, IMAGENET_STD, NetworkEncoder, Preprocess
from .weights import existing

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# family → (transformers class, model_type values its config.json may hold, mean, std,
#           a Hub id to show in the "how to get it" message)
FAMILIES = {
    "dinov2": ("Dinov2Model", ("dinov2",), IMAGENET_MEAN, IMAGENET_STD, "facebook/dinov2-base"),
    "clip": ("CLIPVisionModel", ("clip", "clip_vision_model"), CLIP_MEAN, CLIP_STD,
             "openai/clip-vit-base-patch32"),
}


def model_folder(path, family: str) -> Path:
    """Check that ``path`` holds a ``family`` model with safetensors weights."""
    cls, types, _, _, hub_id = FAMILIES[family]
    root = existing(path, f"{cls} folder (config.json + model.safetensors)",
                    f"e.g. huggingface-cli download {hub_id} --local-dir {path}")
    config = root / "config.json"
    if not root.is_dir() or not config.is_file():
        raise CheckpointError(f"{root} is not a transformers model folder (no config.json); "
                              f"expected a {cls} saved with save_pretrained")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise CheckpointError(f"{config} is not a valid config.json ({err})") from None
    if model_type not in types:
        raise CheckpointError(f"{root} holds a {model_type!r} model; {family}: expects "
                              f"model_type {' or '.join(map(repr, types))}")
    if not any(root.glob("*.safetensors")):
        pickled = sorted(p.name for p in root.glob("*.bin"))
        found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no weights"
        raise CheckpointError(
            f"{root} holds {found}; pydiffgen reads safetensors only: convert once with "
            f"python -c \"from transformers import {cls} as M; "
            f"M.from_pretrained('{root}').save_pretrained('{root}', safe_serialization=True)\"")
    return root


def preprocessing(root: Path, family: str, config_size: int) -> Preprocess:
    """Input size and mean/std from ``preprocessor_config.json`` when present."""
    _, _, mean, std, _ = FAMILIES[family]
    size = config_size
    file = root / "preprocessor_config.json"
    if file.is_file():
        try:
            pre = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{file} is not valid JSON ({err})") from None
        mean, std = tuple(pre.get("image_mean", mean)), tuple(pre.get("image_std", std))
        crop = pre.get("crop_size") if pre.get("do_center_crop", True) else None
        crop = crop or pre.get("size")
        if isinstance(crop, dict):
            crop = crop.get("height", crop.get("shortest_edge"))
        if isinstance(crop, int):
            size = crop
    return Preprocess(size=int(size), mean=mean, std=std)


def cls_features(network, x):
    return network(pixel_values=x).pooler_output  # [B, hidden]


def import_transformers(family: str):
    """transformers, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise ConfigError(f"the {family} encoder needs transformers ({err}): "
                          "pip install 'transformers>=5,<6'") from None
    return transformers


def transformers_encoder(path, family: str, *, device=None) -> NetworkEncoder:
    """``family`` ("dinov2" or "clip") encoder from the local folder ``path``."""
    transformers = import_transformers(family)
    root = model_folder(path, family)
    cls = getattr(transformers, FAMILIES[family][0])
    try:
        network = cls.from_pretrained(str(root), local_files_only=True, use_safetensors=True,
                                       use_kernels=False)  # no Hub kernels: nothing fetched
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{root}: cannot be loaded as {cls.__name__} ({first})") from None
    config = network.config
    return NetworkEncoder(network, name=f"{family}:{root.resolve()}",
                          preprocess=preprocessing(root, family, config.image_size),
                          features=cls_features, feature_dim=config.hidden_size, device=device)
