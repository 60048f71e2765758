"""LoRA tools, one program with subcommands (``python -m training.tools``): merge a LoRA into a checkpoint, merge
LoRAs into one, resize a LoRA by SVD, extract a LoRA from two checkpoints, inspect a LoRA. See ``__main__.py``."""
