"""fp8_base and full_bf16 (kohya's names): the frozen base stored in float8 and upcast per layer, LoRA weights in
bf16 with stochastic rounding; both train the tiny model and export a normal LoRA."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny_pipeline

from training.contract.config import TrainConfig
from training.contract.config_io import load_config
from training.contract.events import read_events
from training.contract.lora_check import SelfCheck
from training.models.conditioning import TextEmbeds
from training.models.low_precision import FP8, StochasticAdamW, stochastic_round_to_bf16, store_in_fp8
from training.run.loss import per_sample_loss
from training.run.runner import run


def test_fp8_storage_round_trips_and_upcasts_per_layer():
    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Conv2d(8, 4, 3, padding=1))
    layers.requires_grad_(False)
    # values e4m3 holds exactly survive the trip unchanged; the rest round to the nearest of them
    exact = torch.tensor([0.5, -0.25, 1.75, 0.0078125, 448.0])
    assert torch.equal(exact.to(FP8).float(), exact)
    weights = [m.weight.clone() for m in layers]
    before = layers[0](torch.randn(2, 16))
    saved = store_in_fp8(layers, torch.float32)
    assert saved == sum(w.numel() * 3 for w in weights)  # 4 bytes -> 1 per weight
    for module, weight in zip(layers, weights, strict=True):
        assert module.weight.dtype == FP8
        assert torch.equal(module.weight.float(), weight.to(FP8).float())
        assert torch.allclose(module.weight.float(), weight, rtol=1 / 8, atol=2**-9)
    x = torch.randn(2, 16)
    out = layers[0](x)
    assert out.dtype == torch.float32 and before.shape == out.shape
    reference = torch.nn.functional.linear(x, weights[0], layers[0].bias)
    assert torch.allclose(out, reference, rtol=0.1, atol=0.05)
    assert layers[1](torch.randn(1, 8, 5, 5)).shape == (1, 4, 5, 5)


def test_fp8_step_loss_stays_close_to_the_float32_step():
    unet = build_tiny_pipeline("sd1").unet.requires_grad_(False)
    scheduler = build_tiny_pipeline("sd1").scheduler
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(4, 4, 8, 8, generator=generator)
    noise = torch.randn(4, 4, 8, 8, generator=generator)
    cond = TextEmbeds(torch.randn(4, 77, unet.config.cross_attention_dim, generator=generator), None)
    timesteps = torch.tensor([100, 300, 600, 900])
    with torch.no_grad():
        full = per_sample_loss(unet, scheduler, latents, cond, noise, timesteps)
        fp8 = copy.deepcopy(unet)
        store_in_fp8(fp8, torch.float32)
        assert all(m.weight.dtype == FP8 for m in fp8.modules() if isinstance(m, torch.nn.Linear | torch.nn.Conv2d))
        low = per_sample_loss(fp8, scheduler, latents, cond, noise, timesteps)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low, full, rtol=0.05, atol=0.0)


def test_stochastic_rounding_keeps_updates_below_bf16_spacing():
    start = torch.full((20000,), 1.0)
    step = 1e-3  # below bf16's spacing at 1.0 (2**-7 = 0.0078): rounding to nearest loses it
    nearest = (start + step).to(torch.bfloat16).float()
    assert torch.equal(nearest, start)
    generator = torch.Generator().manual_seed(0)
    rounded = stochastic_round_to_bf16(start + step, generator).float()
    assert set(rounded.unique().tolist()) <= {1.0, 1.0078125}
    assert abs(rounded.mean().item() - (1.0 + step)) < 2e-4  # the update survives on average


def test_stochastic_adamw_moves_bf16_weights_like_float32_adamw():
    torch.manual_seed(0)
    target = torch.randn(64, 64)
    weights = torch.nn.Parameter(torch.randn(64, 64) * 0.01)
    start = weights.detach().clone()
    low = torch.nn.Parameter(weights.detach().to(torch.bfloat16))
    ref_opt = torch.optim.AdamW([weights], lr=1e-4, weight_decay=1e-2)
    low_opt = StochasticAdamW([low], lr=1e-4, weight_decay=1e-2)
    for _ in range(30):
        for p, opt in ((weights, ref_opt), (low, low_opt)):
            opt.zero_grad()
            ((p.float() - target) ** 2).mean().backward()
            opt.step()
    assert low.dtype == torch.bfloat16 and low.grad.dtype == torch.bfloat16
    moved = (weights.detach() - start).abs().mean()
    assert moved > 2e-3  # 30 steps of about 1e-4 each
    assert (low.detach().float() - weights.detach()).abs().mean() < 0.1 * moved  # the bf16 copy followed


def test_kohya_config_with_fp8_base_and_full_bf16_loads(tmp_path):
    path = tmp_path / "kohya.toml"
    path.write_text("[training]\nfp8_base = true\nfull_bf16 = true\nmixed_precision = \"bf16\"\n", encoding="utf-8")
    cfg, _ = load_config(path)
    assert cfg.fp8_base and cfg.full_bf16


def test_fp8_base_with_dora_is_refused_in_one_line():
    with pytest.raises(ValueError, match="fp8_base = true with DoRA"):
        TrainConfig(fp8_base=True, network_module="lycoris.kohya", network_args=["algo=locon", "dora_wd=True"])


@pytest.mark.slow
def test_fp8_base_and_full_bf16_train_and_export_a_normal_lora(tmp_path, tiny_sd1, dataset_dir):
    out = tmp_path / "run"
    cfg = TrainConfig(pretrained_model_name_or_path=str(tiny_sd1), train_data_dir=str(dataset_dir),
                      output_dir=str(out), resolution="64", min_bucket_reso=64, max_bucket_reso=128,
                      network_dim=4, network_alpha=4.0, learning_rate=2e-3, lr_scheduler="constant",
                      max_train_steps=6, mixed_precision="no", seed=2, network_train_unet_only=False,
                      validation_every_n_steps=3, fp8_base=True, full_bf16=True, max_data_loader_n_workers=0,
                      sample_prompts="a red circle --w 64 --h 64 --s 2", sample_every_n_steps=6)
    assert run(cfg) == "done"
    events = read_events(out)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert len(losses) == 6 and all(isinstance(x, float) for x in losses)  # finite: NaN is written as a string
    assert all(isinstance(e["loss"], float) for e in events if e["event"] == "val")  # validation on the fp8 base
    assert any(e["event"] == "sample" and e["paths"] for e in events)  # sampling with the fp8 base too
    check = SelfCheck.from_event(next(e for e in events if e["event"] == "checkpoint"))
    assert check is not None and check.ok and check.missing == 0 and set(check.parts) == {"unet", "te"}
    tensors = load_file(str(Path(out) / "lora.safetensors"))
    ups = [t for k, t in tensors.items() if k.endswith("lora_up.weight")]
    assert ups and any(t.abs().max() > 0 for t in ups)  # the bf16 LoRA moved away from its zero start
