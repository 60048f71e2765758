"""The figures the UI shows before a run, checked against what a run makes: the LoRA file size per network type
against the adapters the engine injects into the real full-size models (built on the meta device from the bundled
configs) and against exported files, the steps against the trainer's formula worked out by hand."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from training.contract.config import TrainConfig
from training.contract.network import LYCORIS
from training.models.families import FAMILIES
from training.networks.build import add_network, module_infos
from training.networks.sizes import module_size
from training.networks.tables import build_on_meta
from training.networks.targets import Ranks, select_targets
from training.plan.estimates import LoraSize, lora_size, total_steps

NETWORKS = {
    "LoRA": {},
    "LoCon": {"conv_dim": 8, "conv_alpha": 4.0},
    "LoCon full": {"network_module": LYCORIS, "network_args": ["preset=full"]},
    "DoRA": {"network_module": LYCORIS, "network_args": ["dora_wd=True", "preset=attn-mlp"]},
    "LoHa": {"network_module": LYCORIS, "network_args": ["algo=loha", "conv_dim=4"]},
    "LoHa Tucker": {"network_module": LYCORIS, "network_args": ["algo=loha", "use_tucker=True",
                                                                "preset=unet-transformer-only"]},
    "LoKr": {"network_module": LYCORIS, "network_args": ["algo=lokr", "factor=8"]},
    "LoKr both": {"network_module": LYCORIS, "network_args": ["algo=lokr", "decompose_both=True", "use_tucker=True",
                                                              "preset=attn-only"]},
}


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def meta_family(request):
    return request.param


def meta_parts(family: str, trained_encoders: list[int]) -> list[tuple[str, torch.nn.Module]]:
    """The family's full-size UNet and the trained text encoders, without weights."""
    folder = FAMILIES[family].config_dir
    names = [n for n in ("text_encoder", "text_encoder_2") if (folder / n).is_dir()]
    return [("unet", build_on_meta(folder / "unet", "unet"))] + [
        ("text_encoder", build_on_meta(folder / names[i], names[i])) for i in trained_encoders]


def injected(cfg: TrainConfig, parts: list[tuple[str, torch.nn.Module]]) -> tuple[int, int, int]:
    """(adapter layers, conv-rank layers, adapter values) of the network the engine injects into ``parts``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    spec = cfg.network
    ranks = Ranks.of(spec, cfg.network_dim, cfg.network_alpha)
    layers = conv = values = 0
    for part, model in parts:
        conv_paths = {t.path for t in select_targets(spec, module_infos(model), part) if t.conv_rank}
        params = add_network(model, spec, ranks, part)
        values += sum(p.numel() for p in params)
        wrapped = [path for path, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
        layers += len(wrapped)
        conv += len(conv_paths.intersection(wrapped))
    return layers, conv, values


@pytest.mark.parametrize("kind", ["LoRA", "LoCon full", "LoHa", "LoKr"])
@pytest.mark.parametrize(("settings", "trained"), [
    ({"network_dim": 16}, "all"),
    ({"network_dim": 32, "network_train_unet_only": True}, "none"),
    ({"network_dim": 8, "text_encoder_lr": [1e-4, 0.0]}, "first"),
])
def test_file_size_counts_the_adapters_of_the_real_model(meta_family, kind, settings, trained):
    cfg = TrainConfig(**(settings | NETWORKS[kind]))
    encoders = 2 if meta_family == "sdxl" else 1
    parts = meta_parts(meta_family, cfg.trained_text_encoders(encoders))
    assert len(parts) - 1 == {"all": encoders, "none": 0, "first": 1}[trained]
    layers, conv, values = injected(cfg, parts)
    size = lora_size(cfg, meta_family)
    assert (size.modules, size.conv_modules, size.values) == (layers, conv, values)
    assert size.linear_modules == layers - conv
    assert size.data_bytes == (size.values + size.modules) * 2  # fp16 values and one fp16 alpha per module
    assert lora_size(cfg.model_copy(update={"save_precision": "float"}), meta_family).data_bytes == 2 * size.data_bytes


@pytest.mark.parametrize("kind", list(NETWORKS))
def test_every_type_s_size_counts_the_adapters_on_sd1(kind):
    cfg = TrainConfig(**({"network_dim": 16, "network_alpha": 8.0} | NETWORKS[kind]))
    layers, conv, values = injected(cfg, meta_parts("sd1", cfg.trained_text_encoders(1)))
    size = lora_size(cfg, "sd1")
    assert (size.modules, size.conv_modules, size.values) == (layers, conv, values)
    assert size.conv_modules > 0 if kind in ("LoCon", "LoCon full", "LoHa", "LoKr") else size.conv_modules == 0


def test_kohya_default_trains_more_than_the_attention_projections():
    """networks.lora without args is kohya's set: attention, feed-forward and proj_in/proj_out of every transformer
    block, and the text encoder's attention and MLP (SD1.5 at rank 16: 192 + 72 modules, 0 convs)."""
    size = lora_size(TrainConfig(network_dim=16), "sd1")
    assert (size.modules, size.conv_modules) == (192 + 72, 0)


def tiny_size(cfg: TrainConfig, pipe, encoders: list) -> LoraSize:
    """The estimate's own arithmetic on the tiny model's modules."""
    spec = cfg.network
    ranks = Ranks.of(spec, cfg.network_dim, cfg.network_alpha)
    parts = [("unet", pipe.unet)] + [("text_encoder", te) for te in encoders]
    return LoraSize.of([module_size(t, spec, ranks) for part, model in parts
                        for t in select_targets(spec, module_infos(model), part)], cfg.save_precision)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("kind", list(NETWORKS))
def test_size_matches_an_exported_file(tmp_path, family, kind):
    """The tensors' count and bytes exactly; with the estimated header, the whole file within 5% (a tiny model's
    file is mostly header, so this holds the header estimate too)."""
    from lora_checks import export_file, text_encoders
    from tiny_models import build_tiny_pipeline

    cfg = TrainConfig(**({"network_dim": 4, "network_alpha": 2.0} | NETWORKS[kind]))
    pipe = build_tiny_pipeline(family)
    size = tiny_size(cfg, pipe, [text_encoders(pipe)[i] for i in cfg.trained_text_encoders(len(text_encoders(pipe)))])
    ranks = Ranks.of(cfg.network, cfg.network_dim, cfg.network_alpha)
    add_network(pipe.unet, cfg.network, ranks, "unet")
    for i in cfg.trained_text_encoders(len(text_encoders(pipe))):
        add_network(text_encoders(pipe)[i], cfg.network, ranks, "text_encoder")
    path, _, _ = export_file(pipe, family, tmp_path / "tiny.safetensors")
    raw = path.read_bytes()
    header_len = struct.unpack("<Q", raw[:8])[0]
    tensors = {k: v for k, v in json.loads(raw[8:8 + header_len]).items() if k != "__metadata__"}
    assert len(tensors) == size.tensors
    assert size.data_bytes == len(raw) - 8 - header_len
    assert size.bytes == pytest.approx(len(raw), rel=0.05)


@pytest.mark.parametrize(("images", "batch", "accumulate", "epochs"), [
    (200, 2, 1, 10), (301, 2, 1, 10), (150, 1, 1, 10), (7, 4, 2, 3), (1, 8, 1, 1)])
def test_steps_are_images_times_repeats_over_batch_times_epochs(images, batch, accumulate, epochs):
    cfg = TrainConfig(train_batch_size=batch, gradient_accumulation_steps=accumulate, max_train_epochs=epochs)
    assert total_steps(cfg, images) == epochs * math.ceil(math.ceil(images / batch) / accumulate)


def test_max_train_steps_is_the_length_without_epochs():
    assert total_steps(TrainConfig(max_train_steps=1234, train_batch_size=4), 500) == 1234


def test_a_preset_without_text_encoder_modules_trains_the_unet_only():
    """LyCORIS's unet-transformer-only has no text-encoder modules: the run, the size and the words say UNet only,
    whatever the text encoder's learning rate."""
    from training.plan.estimates import trained_parts

    cfg = TrainConfig(network_module=LYCORIS, network_args=["preset=unet-transformer-only"], text_encoder_lr=1e-4)
    assert cfg.trained_text_encoders(2) == [] and not cfg.trains_text_encoder
    assert trained_parts(cfg, "sdxl") == "UNet only"
    unet_only = TrainConfig(network_module=LYCORIS, network_args=["preset=unet-transformer-only"],
                            network_train_unet_only=True)
    assert lora_size(cfg, "sdxl") == lora_size(unet_only, "sdxl")
