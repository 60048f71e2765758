"""The config reaches the step: prepare's LoRA groups, the step's parts and ``StepSettings`` built from a config."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from tiny_models import build_tiny_pipeline

from training.contract.config import TrainConfig
from training.lora_files.export import kohya_state_dict
from training.models.families import FAMILIES
from training.models.loading import BaseModel
from training.run.parts import StepSettings
from training.run.prepare import add_networks, build_step_parts


def tiny_base() -> BaseModel:
    pipe = build_tiny_pipeline("sd1")
    return BaseModel(FAMILIES["sd1"], pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler)


def lora_ranks(params: list[torch.nn.Parameter]) -> set[int]:
    """The rank of every LoRA matrix pair: lora_A is [rank, in], lora_B is [out, rank]."""
    return {min(p.shape[:2]) for p in params}


def trainable(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_step_settings_carry_the_config_values():
    cfg = TrainConfig(noise_offset=0.05, min_snr_gamma=5.0, max_grad_norm=0.5, clip_skip=2)
    s = StepSettings.from_config(cfg)
    assert (s.noise_offset, s.min_snr_gamma, s.max_grad_norm, s.clip_skip) == (0.05, 5.0, 0.5, 2)


@pytest.mark.parametrize("unet_only", [False, True])
def test_lora_groups_follow_the_config(unet_only):
    cfg = TrainConfig(network_dim=4, network_alpha=2, unet_lr=3e-4, text_encoder_lr=5e-5,
                      network_train_unet_only=unet_only)
    base = tiny_base()
    groups = add_networks(cfg, base)

    expected = [("unet", 3e-4)] + ([] if unet_only else [("text_encoder", 5e-5)])
    assert [(g["name"], g["lr"]) for g in groups] == expected
    assert all(lora_ranks(g["params"]) == {4} for g in groups)
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in base.unet.parameters() if p.requires_grad}
    te_trainable = trainable(base.text_encoder)
    assert all("lora_" in name for name in te_trainable)  # the encoder's own weights stay frozen
    assert bool(te_trainable) is not unet_only


def test_network_weights_start_the_lora_from_that_file(tmp_path):
    cfg = TrainConfig(network_dim=4, network_alpha=2)
    first = tiny_base()
    with torch.no_grad():
        for group in add_networks(cfg, first):
            for p in group["params"]:
                p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    path = tmp_path / "start.safetensors"
    save_file(kohya_state_dict(first.unet, first.text_encoders, FAMILIES["sd1"], torch.float32), str(path))

    second = tiny_base()
    groups = add_networks(cfg.model_copy(update={"network_weights": str(path)}), second)
    for model_a, model_b in ((first.unet, second.unet), (first.text_encoder, second.text_encoder)):
        lora_a = {n: p for n, p in model_a.named_parameters() if "lora_" in n}
        lora_b = {n: p for n, p in model_b.named_parameters() if "lora_" in n}
        assert lora_a.keys() == lora_b.keys() and lora_a
        assert all(torch.equal(lora_a[n], lora_b[n]) for n in lora_a)
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(
        p.numel() for m in (second.unet, second.text_encoder) for n, p in m.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("unet_only", [False, True])
def test_step_parts_wrap_the_trained_models_with_the_config_s_optimizer(unet_only):
    cfg = TrainConfig(network_dim=4, network_alpha=2, unet_lr=3e-4, text_encoder_lr=5e-5, lr_scheduler="constant",
                      seed=11, noise_offset=0.1, network_train_unet_only=unet_only)
    base = tiny_base()
    groups = add_networks(cfg, base)
    accelerator = Accelerator(cpu=True)
    parts = build_step_parts(cfg, accelerator, base.unet, base.text_encoders, groups, 100,
                             noise_scheduler=base.noise_scheduler, tokenizers=base.tokenizers, vae=base.vae,
                             text_cache=None, weight_dtype=torch.float32)

    assert parts.accelerator is accelerator
    lrs = [3e-4] if unet_only else [3e-4, 5e-5]
    assert [g["lr"] for g in parts.optimizer.param_groups] == lrs
    assert isinstance(parts.optimizer.optimizer, torch.optim.AdamW)
    assert parts.lr_scheduler.get_last_lr() == lrs
    assert parts.trained_models == [parts.unet] + ([] if unet_only else [parts.text_encoders[0]])
    assert len(parts.text_encoders) == 1
    assert parts.unet(torch.zeros(1, 4, 8, 8), torch.tensor([1]), torch.zeros(1, 77, 32)).sample.shape[1] == 4
    assert [id(p) for p in parts.params] == [id(p) for g in groups for p in g["params"]]
    assert parts.generator.initial_seed() == 11
    assert parts.settings == StepSettings.from_config(cfg)
