"""The figures the UI shows before a run, checked against what a run makes: the LoRA file size against the real
models' layer shapes (built on the meta device from the bundled configs) and a real exported file, the steps
against the trainer's formula worked out by hand."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from training.contract.config import TrainConfig
from training.models.families import FAMILIES
from training.networks.lora import TEXT_ENCODER_TARGETS, UNET_TARGETS
from training.plan.estimates import LoraSize, lora_size, text_encoder_projections, total_steps, unet_projections


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def meta_models(request):
    """(family, UNet, text encoders) at full size from ``assets/models/<family>``, without weights."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = FAMILIES[request.param].config_dir
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder=sub, local_files_only=True))
                    for sub in ("text_encoder", "text_encoder_2") if (folder / sub).is_dir()]
    return request.param, unet, encoders


def targeted_linears(model: torch.nn.Module, targets: list[str]) -> list[torch.nn.Linear]:
    """The layers peft puts a LoRA on: a module whose name is a target or ends with '.<target>'."""
    return [m for name, m in model.named_modules()
            if any(name == t or name.endswith("." + t) for t in targets) and isinstance(m, torch.nn.Linear)]


def lora_values(layers: list[torch.nn.Linear], rank: int) -> int:
    """down (rank x in) + up (out x rank) per layer, from the layers' own weight shapes."""
    return sum(rank * layer.weight.shape[1] + layer.weight.shape[0] * rank for layer in layers)


@pytest.mark.parametrize(("settings", "trained"), [
    ({"network_dim": 16}, "all"),
    ({"network_dim": 32, "network_train_unet_only": True}, "none"),
    ({"network_dim": 8, "text_encoder_lr": [1e-4, 0.0]}, "first"),
])
def test_file_size_counts_the_targeted_layers_of_the_real_model(meta_models, settings, trained):
    family, unet, encoders = meta_models
    cfg = TrainConfig(**settings)
    layers = targeted_linears(unet, UNET_TARGETS)
    for te in {"all": encoders, "none": [], "first": encoders[:1]}[trained]:
        layers += targeted_linears(te, TEXT_ENCODER_TARGETS)
    size = lora_size(cfg, family)
    assert (size.modules, size.values) == (len(layers), lora_values(layers, cfg.network_dim))
    assert size.data_bytes == (size.values + size.modules) * 2  # fp16 values and one fp16 alpha per module
    assert lora_size(cfg.model_copy(update={"save_precision": "float"}), family).data_bytes == 2 * size.data_bytes


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_size_matches_an_exported_file(tmp_path, family):
    """The tensors' bytes exactly; with the estimated header, the whole file within 5% (a tiny model's file is
    mostly header, so this holds the header estimate too)."""
    from lora_checks import export_file, lora_pipeline, text_encoders

    rank = 4
    pipe = lora_pipeline(family, rank, 2.0)
    path, _, _ = export_file(pipe, family, tmp_path / "tiny.safetensors")
    projections = unet_projections(dict(pipe.unet.config))
    for te in text_encoders(pipe):
        projections += text_encoder_projections(te.config.to_dict())
    size = LoraSize.of(projections, rank)
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    tensors = {k: v for k, v in json.loads(raw[8:8 + header_len]).items() if k != "__metadata__"}
    assert len(tensors) == 3 * size.modules
    assert size.data_bytes == len(raw) - 8 - header_len
    assert size.bytes == pytest.approx(len(raw), rel=0.05)


@pytest.mark.parametrize(("images", "batch", "accumulate", "epochs"), [
    (200, 2, 1, 10), (301, 2, 1, 10), (150, 1, 1, 10), (7, 4, 2, 3), (1, 8, 1, 1)])
def test_steps_are_images_times_repeats_over_batch_times_epochs(images, batch, accumulate, epochs):
    cfg = TrainConfig(train_batch_size=batch, gradient_accumulation_steps=accumulate, max_train_epochs=epochs)
    assert total_steps(cfg, images) == epochs * math.ceil(math.ceil(images / batch) / accumulate)


def test_max_train_steps_is_the_length_without_epochs():
    assert total_steps(TrainConfig(max_train_steps=1234, train_batch_size=4), 500) == 1234
