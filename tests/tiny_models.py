"""Tiny random-weight SD pipelines and datasets for tests: the same builders the demo uses."""

from training.demo import build_tiny_pipeline, make_image_dataset, save_tiny_pipeline

__all__ = ["build_tiny_pipeline", "make_image_dataset", "save_tiny_pipeline"]
