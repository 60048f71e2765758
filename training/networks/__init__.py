"""The adapters injected into the base model's UNet and text encoders (``lora``: peft LoRA on the attention
projections)."""
