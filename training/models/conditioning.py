"""What the UNet is conditioned on besides the noisy latents, for every family.

SD1/SD2: the caption's hidden states. SDXL adds a pooled caption vector (text encoder 2's projected output) and six
"micro-conditioning" numbers per image, ``add_time_ids`` = (original height, original width, crop top, crop left,
target height, target width), which is how SDXL was trained to know an image's source size and crop (diffusers'
``StableDiffusionXLPipeline._get_add_time_ids`` builds the same six for inference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TextEmbeds:
    """Text conditioning of a batch (or, unbatched, of one caption in the text cache)."""

    hidden: torch.Tensor                # [B, 77, D]: D = 768/1024, or 768 + 1280 concatenated on SDXL
    pooled: torch.Tensor | None = None  # [B, P]: SDXL's pooled text-encoder-2 output; None for SD1/SD2

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEmbeds:
        pooled = None if self.pooled is None else self.pooled.to(device, dtype)
        return TextEmbeds(self.hidden.to(device, dtype), pooled)

    def unbatched(self) -> list[TextEmbeds]:
        pooled = [None] * len(self.hidden) if self.pooled is None else list(self.pooled)
        return [TextEmbeds(h, p) for h, p in zip(self.hidden, pooled, strict=True)]

    def expand(self, n: int) -> TextEmbeds:
        """One caption's batch-1 embeddings repeated n times (a view, no copy)."""
        pooled = None if self.pooled is None else self.pooled.expand(n, -1)
        return TextEmbeds(self.hidden.expand(n, -1, -1), pooled)

    @staticmethod
    def stack(items: list[TextEmbeds]) -> TextEmbeds:
        pooled = None if items[0].pooled is None else torch.stack([e.pooled for e in items])
        return TextEmbeds(torch.stack([e.hidden for e in items]), pooled)


def add_time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, target_size: torch.Tensor) -> torch.Tensor:
    """[B, 6] SDXL micro-conditioning from [B, 2] (height, width), (top, left) and (height, width) tensors."""
    return torch.cat([original_size, crop_top_left, target_size], dim=1)


def unet_kwargs(embeds: TextEmbeds, time_ids: torch.Tensor | None, dtype: torch.dtype) -> dict:
    """Keyword arguments of ``UNet2DConditionModel.forward`` besides the latents and timesteps."""
    kwargs: dict = {"encoder_hidden_states": embeds.hidden.to(dtype)}
    if embeds.pooled is not None:
        if time_ids is None:
            raise ValueError("an SDXL UNet needs add_time_ids (original size, crop, target size) for every image")
        kwargs["added_cond_kwargs"] = {"text_embeds": embeds.pooled.to(dtype),
                                       "time_ids": time_ids.to(embeds.pooled.device, dtype)}
    return kwargs
