"""The loss and noise settings reach the step: a spy on one real tiny run records what the loss function received
(loss options, the batch's masks, the perturbed input noise, the timesteps and the schedule)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import training.run.loop as loop_module
from training.contract.config import TrainConfig
from training.contract.events import read_events
from training.run.runner import run

STEPS = 4


@dataclass
class LossSpy:
    options: list = field(default_factory=list)
    masks: list[tuple[list[str], torch.Tensor]] = field(default_factory=list)
    timesteps: list[torch.Tensor] = field(default_factory=list)
    perturbed: list[bool] = field(default_factory=list)
    last_alpha_bar: list[float] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


def rgba_dataset(root: Path) -> Path:
    """Two 64x64 images: one opaque on its left 16 columns, one on its top 32 rows; transparent elsewhere."""
    concept = root / "1_shape"
    concept.mkdir(parents=True)
    for name, region in (("left", np.s_[:, :16]), ("top", np.s_[:32, :])):
        pixels = np.zeros((64, 64, 4), dtype=np.uint8)
        pixels[region] = (200, 40, 40, 255)
        Image.fromarray(pixels, "RGBA").save(concept / f"{name}.png")
        (concept / f"{name}.txt").write_text(f"a {name} shape")
    return root


def expected_mask(name: str) -> torch.Tensor:
    mask = torch.zeros(8, 8)
    if name == "left":
        mask[:, :2] = 1
    else:
        mask[:4, :] = 1
    return mask


@pytest.fixture(scope="module")
def spied(tmp_path_factory, tiny_sd1) -> tuple[LossSpy, Path]:
    root = tmp_path_factory.mktemp("loss_reach_step")
    cfg = TrainConfig(
        pretrained_model_name_or_path=str(tiny_sd1), train_data_dir=str(rgba_dataset(root / "data")),
        output_dir=str(root / "run"), resolution="64", min_bucket_reso=64, max_bucket_reso=64, network_dim=4,
        network_alpha=2.0, learning_rate=1e-3, lr_scheduler="constant", mixed_precision="no", seed=3,
        network_train_unet_only=True, validation_every_n_steps=0, max_train_steps=STEPS,
        loss_type="huber", huber_schedule="constant", huber_c=0.2, masked_loss=True, alpha_mask=True,
        zero_terminal_snr=True, min_timestep=990, ip_noise_gamma=0.1)
    spy = LossSpy()
    real_loss, real_step = loop_module.per_sample_loss, loop_module.train_step

    def loss(unet, scheduler, latents, cond, noise, timesteps, min_snr_gamma=None, time_ids=None, **more):
        spy.options.append(more["options"])
        spy.masks.append((list(spy.paths), more["mask"].cpu()))
        spy.timesteps.append(timesteps.cpu())
        spy.perturbed.append(not torch.equal(more["noisy_with"], noise))
        spy.last_alpha_bar.append(float(scheduler.alphas_cumprod[-1]))
        return real_loss(unet, scheduler, latents, cond, noise, timesteps, min_snr_gamma, time_ids, **more)

    def step(parts, batch):
        spy.paths = batch["path"]
        return real_step(parts, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_module, "per_sample_loss", loss)
        mp.setattr(loop_module, "train_step", step)
        assert run(cfg) == "done"
    return spy, root / "run"


def test_loss_type_and_huber_settings_reach_the_loss(spied):
    spy, _ = spied
    assert len(spy.options) == STEPS
    assert {(o.loss_type, o.huber_schedule, o.huber_c) for o in spy.options} == {("huber", "constant", 0.2)}


def test_each_image_s_alpha_mask_reaches_the_loss_at_latent_size(spied):
    spy, _ = spied
    seen = set()
    for paths, masks in spy.masks:
        for path, mask in zip(paths, masks, strict=True):
            name = Path(path).stem
            torch.testing.assert_close(mask, expected_mask(name))
            seen.add(name)
    assert seen == {"left", "top"}


def test_noise_settings_reach_the_step(spied):
    spy, run_dir = spied
    assert all(t.min() >= 990 and t.max() <= 999 for t in spy.timesteps)
    assert all(spy.perturbed)  # ip_noise_gamma: the UNet's input noise differs from the target's
    assert spy.last_alpha_bar == [0.0] * STEPS  # zero_terminal_snr rescaled the step's schedule
    warnings = [e for e in read_events(run_dir) if e["event"] == "warning"]
    assert any(w["code"] == "zero_terminal_snr" for w in warnings)  # tiny_sd1 is epsilon-prediction
