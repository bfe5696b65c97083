"""Tiny random diffusers networks for the adapter tests, and how to save a pipeline."""

import json

import pytest
import torch

EMBED = 16  # text embedding width of the text-conditional networks
CLASSES = 3


def _unet(diffusers, **kw):
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **kw)


def _text_unet(diffusers):
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
        cross_attention_dim=EMBED, attention_head_dim=4)


def _dit(diffusers):  # learned σ: 2 output channels, the second dropped by the adapter
    return diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=1, out_channels=2,
        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=CLASSES)


def _transformer(diffusers):
    return diffusers.Transformer2DModel(
        num_attention_heads=2, attention_head_dim=4, in_channels=1, out_channels=1,
        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=CLASSES,
        norm_type="ada_norm_zero")


# name -> (builder, condition kind); the condition of a batch is made by make_cond
NETWORKS = {
    "unet": (lambda d: _unet(d), None),
    "unet_classes": (lambda d: _unet(d, num_class_embeds=CLASSES), "classes"),
    "unet_text": (_text_unet, "text"),
    "dit": (_dit, "classes"),
    "transformer": (_transformer, "classes"),
}


def make_cond(kind, n, seed=0, dtype=torch.float64):
    """A batch-n condition of ``kind`` (None, "classes", "text")."""
    g = torch.Generator().manual_seed(seed)
    if kind == "classes":
        return torch.randint(0, CLASSES, (n,), generator=g)
    if kind == "text":
        return torch.randn(n, 5, EMBED, generator=g, dtype=dtype)
    return None


def save_pipeline(root, net, scheduler, **parts):
    """``root``/{unet or transformer, scheduler, *parts} with a model_index.json."""
    folder = "transformer" if "Transformer" in type(net).__name__ else "unet"
    net.save_pretrained(root / folder, safe_serialization=True)
    scheduler.save_pretrained(root / "scheduler")
    index = {"_class_name": "DiffusionPipeline", folder: ["diffusers", type(net).__name__],
             "scheduler": ["diffusers", type(scheduler).__name__]}
    for name, part in parts.items():
        part.save_pretrained(root / name)
        index[name] = [type(part).__module__.split(".")[0], type(part).__name__]
    (root / "model_index.json").write_text(json.dumps(index))
    return root


VOCAB = ["l", "o", "w", "e", "r", "s", "t", "i", "d", "n", "lo", "l</w>", "w</w>", "r</w>",
         "t</w>", "low</w>", "er</w>", "lowest</w>", "newer</w>", "wider", "<unk>",
         "<|startoftext|>", "<|endoftext|>"]


def clip_text_parts(tmp_path):
    """A tiny CLIP tokenizer (its own vocabulary and merges) and text encoder."""
    transformers = pytest.importorskip("transformers")
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(VOCAB)}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\nl o\nlo w</w>\ne r</w>\n")
    tokenizer = transformers.CLIPTokenizer(
        str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=7)
    torch.manual_seed(5)
    encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=len(VOCAB), hidden_size=EMBED, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=7, bos_token_id=21, eos_token_id=22,
        pad_token_id=22)).eval()
    return tokenizer, encoder
