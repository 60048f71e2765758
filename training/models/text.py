"""Caption -> text-encoder conditioning, with kohya/A1111 clip skip.

``clip_skip = n`` takes the output of the n-th layer from the end and passes it through the encoder's final
LayerNorm, as kohya-ss/sd-scripts and AUTOMATIC1111 do (so 1 is the ordinary last hidden state, which the model has
already normalised). SD2's text encoder is already the penultimate OpenCLIP layer (diffusers' conversion drops the
last block), so clip_skip 1 is the correct SD2 default.

SDXL conditions on the penultimate layer of both encoders, concatenated, *without* the final LayerNorm, plus the
projected pooled output of encoder 2 (from its last layer), exactly as SDXL was trained (SGM's conditioner; kohya and
diffusers do the same). Its users' "clip skip 2" therefore changes nothing: clip_skip 1 and 2 both mean the
penultimate layer, and n > 2 takes the n-th last layer of both encoders (diffusers' ``clip_skip = n - 2``).
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.conditioning import TextEmbeds

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
    input_ids = tokenize(tokenizer, captions).to(device_of(text_encoder))
    if clip_skip == 1:
        return text_encoder(input_ids).last_hidden_state
    hidden_states = text_encoder(input_ids, output_hidden_states=True).hidden_states
    return final_layer_norm(text_encoder)(hidden_states[-clip_skip])


def encode_text(text_encoders: list[nn.Module], tokenizers: list, captions: list[str],
                clip_skip: int = 1) -> TextEmbeds:
    """The UNet's text conditioning for any family: one encoder (SD1/SD2) or SDXL's two."""
    if len(text_encoders) == 1:
        return TextEmbeds(encode_prompts(text_encoders[0], tokenizers[0], captions, clip_skip))
    return encode_sdxl(text_encoders, tokenizers, captions, clip_skip)


def sdxl_layer(clip_skip: int) -> int:
    """Index into ``hidden_states`` that SDXL conditions on: the penultimate layer unless clip_skip asks for more."""
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be >= 1, got {clip_skip}")
    return -max(2, clip_skip)


def encode_sdxl(text_encoders: list[nn.Module], tokenizers: list, captions: list[str],
                clip_skip: int = 1) -> TextEmbeds:
    """Penultimate hidden states of both encoders concatenated [B, 77, D1 + D2], and encoder 2's pooled projection."""
    layer = sdxl_layer(clip_skip)
    hidden, pooled = [], None
    for encoder, tokenizer in zip(text_encoders, tokenizers, strict=True):
        input_ids = tokenize(tokenizer, captions).to(device_of(encoder))
        out = encoder(input_ids, output_hidden_states=True)
        hidden.append(out.hidden_states[layer])
        pooled = getattr(out, "text_embeds", None)
    if pooled is None:
        raise ValueError("SDXL's second text encoder must be a CLIPTextModelWithProjection (for the pooled vector)")
    return TextEmbeds(torch.cat(hidden, dim=-1), pooled)


def device_of(model: nn.Module) -> torch.device:
    """Where the model's weights are; also for a DistributedDataParallel wrapper, which has no ``.device``."""
    return next(model.parameters()).device


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
