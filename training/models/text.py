"""Caption -> text-encoder conditioning, with kohya/A1111 clip skip.

``clip_skip = n`` takes the output of the n-th layer from the end and passes it through the encoder's final
LayerNorm, as kohya-ss/sd-scripts and AUTOMATIC1111 do (so 1 is the ordinary last hidden state, which the model has
already normalised). SD2's text encoder is already the penultimate OpenCLIP layer (diffusers' conversion drops the
last block), so clip_skip 1 is the correct SD2 default.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_LENGTH = 77  # CLIP context: 75 caption tokens + BOS + EOS


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    """Input ids [B, 77]: truncated and padded with the tokenizer's own pad token (family-specific)."""
    return tokenizer(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True,
                     return_tensors="pt").input_ids


def count_tokens(tokenizer, caption: str) -> int:
    """Caption tokens without BOS/EOS, untruncated, so callers can warn about text beyond the 75-token limit."""
    return len(tokenizer(caption, add_special_tokens=False, truncation=False).input_ids)


def encode_prompts(text_encoder: nn.Module, tokenizer, captions: list[str], clip_skip: int = 1) -> torch.Tensor:
    """Hidden states [B, 77, hidden] that condition the UNet."""
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
    input_ids = tokenize(tokenizer, captions).to(text_encoder.device)
    if clip_skip == 1:
        return text_encoder(input_ids).last_hidden_state
    hidden_states = text_encoder(input_ids, output_hidden_states=True).hidden_states
    return final_layer_norm(text_encoder)(hidden_states[-clip_skip])


def final_layer_norm(text_encoder: nn.Module) -> nn.Module:
    """The encoder's final LayerNorm: transformers 5 flattened ``CLIPTextModel`` (no ``.text_model``) while
    ``CLIPTextModelWithProjection`` and older versions still wrap it; accept both, and peft wrappers around them.
    """
    for owner in (text_encoder, getattr(text_encoder, "text_model", None)):
        norm = getattr(owner, "final_layer_norm", None) if owner is not None else None
        if isinstance(norm, nn.Module):
            return norm
    for name, module in text_encoder.named_modules():
        if name.endswith("final_layer_norm"):
            return module
    raise AttributeError(f"{type(text_encoder).__name__} has no final_layer_norm")
