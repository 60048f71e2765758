"""Settings a user sets are what the step receives: spies on one real tiny run record the loss function's
arguments, the captions as batched and the optimizer the step uses."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pytest
import torch
from tiny_models import make_image_dataset

import training.run.loop as loop_module
from training.contract.config import Optimizer, TrainConfig
from training.run.runner import run

KEPT_TAG = "red"  # make_image_dataset captions each image "red, circle, variant <i>" in its 2_red folder
GAMMA = 5.0

# optimizer_type -> (module, class) the user asked for, written out here rather than read from training.run.optim
EXPECTED_OPTIMIZERS = {
    "AdamW": ("torch.optim", "AdamW"),
    "AdamW8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "Lion": ("bitsandbytes.optim", "Lion"),
    "Prodigy": ("prodigyopt", "Prodigy"),
    "Adafactor": ("torch.optim", "Adafactor"),
}


def tiny_config(model: Path, data: Path, out: Path, **extra) -> TrainConfig:
    values = {
        "pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
        "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "network_dim": 4, "network_alpha": 2.0,
        "learning_rate": 1e-3, "lr_scheduler": "constant", "mixed_precision": "no", "seed": 5,
        "network_train_unet_only": True, "validation_every_n_steps": 0,
    } | extra
    return TrainConfig(**values)


@dataclass
class StepSpy:
    """What the step handed on: each loss call's min_snr_gamma and applied weights, each batch's captions, and the
    optimizer after each step."""

    gammas: list[float | None] = field(default_factory=list)
    weights: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (timesteps, weighted/plain)
    captions: list[list[str]] = field(default_factory=list)
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)

    def install(self, mp: pytest.MonkeyPatch) -> None:
        real_loss, real_conditioning, real_step = (loop_module.per_sample_loss, loop_module.conditioning,
                                                   loop_module.train_step)

        def loss(unet, scheduler, latents, cond, noise, timesteps, min_snr_gamma=None, time_ids=None, **more):
            weighted = real_loss(unet, scheduler, latents, cond, noise, timesteps, min_snr_gamma, time_ids, **more)
            with torch.no_grad():
                plain = real_loss(unet, scheduler, latents, cond, noise, timesteps, None, time_ids, **more)
            self.gammas.append(min_snr_gamma)
            self.weights.append((timesteps.cpu(), (weighted.detach() / plain).cpu()))
            return weighted

        def conditioning(parts, captions):
            self.captions.append(list(captions))
            return real_conditioning(parts, captions)

        def step(parts, batch):
            out = real_step(parts, batch)
            self.optimizers.append(parts.optimizer.optimizer)  # accelerate's wrapper holds the optimizer built
            return out

        mp.setattr(loop_module, "per_sample_loss", loss)
        mp.setattr(loop_module, "conditioning", conditioning)
        mp.setattr(loop_module, "train_step", step)


def spied_run(cfg: TrainConfig) -> StepSpy:
    spy = StepSpy()
    with pytest.MonkeyPatch.context() as mp:
        spy.install(mp)
        assert run(cfg) == "done"
    return spy


@pytest.fixture(scope="module")
def options_run(tmp_path_factory, tiny_sd1) -> StepSpy:
    """Two epochs of three captioned images x 2 repeats with min-SNR, caption shuffle and keep_tokens on."""
    root = tmp_path_factory.mktemp("options_run")
    data = make_image_dataset(root / "data")
    cfg = tiny_config(tiny_sd1, data, root / "run", max_train_steps=12, min_snr_gamma=GAMMA, shuffle_caption=True,
                      keep_tokens=1)
    return spied_run(cfg)


def test_min_snr_gamma_reaches_the_loss_and_weights_it(options_run, tiny_sd1):
    assert options_run.gammas == [GAMMA] * 12
    # Epsilon prediction: weight = min(SNR, gamma) / SNR, SNR = alpha_bar / (1 - alpha_bar) of the model's schedule.
    from diffusers import DDPMScheduler

    alpha_bar = DDPMScheduler.from_pretrained(tiny_sd1, subfolder="scheduler").alphas_cumprod
    for timesteps, applied in options_run.weights:
        snr = alpha_bar[timesteps] / (1 - alpha_bar[timesteps])
        torch.testing.assert_close(applied, torch.clamp(snr, max=GAMMA) / snr, rtol=1e-4, atol=1e-6)


def test_shuffled_captions_keep_the_kept_tags_first(options_run):
    captions = [c for batch in options_run.captions for c in batch]
    assert len(captions) == 12
    assert all(c.split(", ")[0] == KEPT_TAG for c in captions), captions
    # The tags after the kept one are shuffled: the run saw both orders of "circle" and "variant <i>".
    assert {c.split(", ")[1] == "circle" for c in captions} == {True, False}, captions


def test_every_optimizer_the_config_allows_is_checked():
    assert set(EXPECTED_OPTIMIZERS) == set(get_args(Optimizer))


def installed(optimizer_type: str) -> bool:
    module, _ = EXPECTED_OPTIMIZERS[optimizer_type]
    try:
        importlib.import_module(module)
    except Exception:  # bitsandbytes can fail with OSError/RuntimeError on a machine it does not support
        return False
    return True


@pytest.mark.parametrize("optimizer_type", list(EXPECTED_OPTIMIZERS))
def test_the_step_uses_the_optimizer_asked_for(tmp_path, tiny_sd1, dataset_dir, optimizer_type):
    if not installed(optimizer_type):
        pytest.skip(f"{EXPECTED_OPTIMIZERS[optimizer_type][0]} is not installed")  # the optional extra is absent
    spy = spied_run(tiny_config(tiny_sd1, dataset_dir, tmp_path / "run", max_train_steps=1,
                                optimizer_type=optimizer_type))
    module, name = EXPECTED_OPTIMIZERS[optimizer_type]
    optimizer = spy.optimizers[-1]
    assert type(optimizer) is getattr(importlib.import_module(module), name)
    assert optimizer.state  # it stepped: per-parameter state exists
