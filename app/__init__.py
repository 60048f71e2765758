"""Gradio UI for the LoRA trainer: torch-free; talks to the engine only through training.contract."""
