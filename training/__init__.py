"""LoRA training engine: config, data, model loading, the training loop and kohya-format export.

Import-light on purpose: importing ``training`` (or ``training.config`` / ``training.events``) does not import torch,
so the UI process can use the config and event contract without paying for the ML stack.
"""

__version__ = "0.1.0"
