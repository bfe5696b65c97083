"""Prompts → text embeddings through a pipeline's own CLIP text encoder and tokenizer.

As Stable Diffusion's pipeline does: the prompt is tokenized padded to the tokenizer's
``model_max_length`` (truncated beyond it) and the text encoder's last hidden state
[L, E] is the condition. Embeddings are cached per prompt: detectors and audits ask for
the same prompts (and the empty prompt, the null condition) many times.
"""

from __future__ import annotations

import torch
from torch import nn


class PromptEncoder(nn.Module):
    """``embed(prompts: list[str]) -> [len(prompts), L, E]`` with ``text_encoder`` (a
    transformers ``CLIPTextModel``) and its ``tokenizer``."""

    def __init__(self, tokenizer, text_encoder: nn.Module):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.text_encoder.parameters()).device
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length,
                                 return_tensors="pt").input_ids
            hidden = self.text_encoder(ids.to(device))[0]  # last hidden state [n, L, E]
            self.cache.update(zip(missing, hidden))
        return torch.stack([self.cache[p] for p in prompts]).to(device)
