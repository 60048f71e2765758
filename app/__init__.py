"""Gradio UI for the LoRA trainer: torch-free; talks to runs only through training.config and training.events."""
