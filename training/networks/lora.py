"""LoRA adapters on the UNet and text-encoder attention projections, via peft."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
ADAPTER = "default"


def add_lora(
    model: torch.nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0
) -> list[torch.nn.Parameter]:
    """Inject a LoRA adapter into ``model`` and return its trainable parameters (everything else is frozen).

    peft initialises ``lora_A`` randomly and ``lora_B`` (kohya's ``lora_up``) to zero, so a fresh adapter leaves the
    model's output unchanged. Scale = alpha / rank, kohya's convention.
    """
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, init_lora_weights=True
    )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    return params
