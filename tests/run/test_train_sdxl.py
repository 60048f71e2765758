"""SDXL end to end on a tiny random-weight SDXL pipeline: the real CLI, SDXL conditioning, export, resume."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from test_train_cli import cli, write_config

import training.run.loop as loop_module
from training.contract.config import TrainConfig
from training.contract.events import read_events
from training.run.runner import run


@pytest.fixture
def mixed_sizes(tmp_path) -> Path:
    """Two captioned images of different shapes: 101x64 is cropped (18 px off the left) into the 64x64 bucket."""
    folder = tmp_path / "data" / "1_robot"
    folder.mkdir(parents=True)
    for name, size, colour in (("wide", (101, 64), (200, 40, 40)), ("square", (64, 64), (40, 40, 200))):
        Image.new("RGB", size, colour).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"robot, {name}", encoding="utf-8")
    return folder.parent


@pytest.mark.slow
def test_cli_trains_sdxl_with_both_text_encoders_and_exports_kohya_sdxl(tmp_path, tiny_sdxl, dataset_dir):
    from diffusers import StableDiffusionXLPipeline
    from lora_checks import apply_with_diffusers, configured_scale

    out = tmp_path / "run"
    config = write_config(tmp_path / "run.toml", tiny_sdxl, dataset_dir, out, max_train_steps=8,
                          text_encoder_lr=[1e-3, 5e-4], sample_prompts="red, circle --w 64 --h 64 --s 2",
                          sample_every_n_steps=8)
    result = cli("--config", str(config))
    assert result.returncode == 0, result.stderr

    events = read_events(out)
    assert events[-1]["event"] == "done"
    assert next(e for e in events if e["event"] == "start")["family"] == "sdxl"
    warnings = {e["code"]: e["msg"] for e in events if e["event"] == "warning"}
    assert "made for 1024 px" in warnings["resolution_low"]  # 64 px: right for the tiny model, wrong for SDXL
    steps = [e for e in events if e["event"] == "step"]
    assert set(steps[-1]["lr"]) == {"unet", "text_encoder", "text_encoder_2"}
    assert steps[0]["lr"]["text_encoder_2"] == pytest.approx(steps[0]["lr"]["text_encoder"] / 2)
    check = [e for e in events if e["event"] == "checkpoint"][-1]["check"]
    matched, _, total = check.split()[:3]
    assert matched == total
    sample = next(e for e in events if e["event"] == "sample")["paths"][0]
    assert Image.open(sample).size == (64, 64)  # made by the SDXL pipeline from our own SDXL embeddings

    path = out / "lora.safetensors"
    with safe_open(str(path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    modules = {k.split(".")[0] for k in keys}
    assert "lora_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_q" in modules  # the depth-2 level, SGM names
    assert any(m.startswith("lora_unet_middle_block_1_") for m in modules)
    assert any(m.startswith("lora_unet_output_blocks_") for m in modules)
    for te in ("lora_te1", "lora_te2"):
        for leaf in ("q_proj", "k_proj", "v_proj", "out_proj"):
            assert f"{te}_text_model_encoder_layers_2_self_attn_{leaf}" in modules
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_text_encoder_lr"] == "[0.001, 0.0005]"

    # SDXL conditions on TE1's penultimate layer, so its last layer gets no gradient: kohya exports it too, as
    # zeros (harmless in every loader, and a kohya file continues training here unchanged).
    tensors = load_file(str(path))
    untrained = {m for m in modules if not tensors[f"{m}.lora_up.weight"].any()}
    assert untrained == {f"lora_te1_text_model_encoder_layers_2_{leaf}"  # kohya's set: attention and MLP
                         for leaf in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                                      "mlp_fc1", "mlp_fc2")}
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    changed, expected, worst, lines = apply_with_diffusers(pipe, path, "sdxl", **configured_scale(events))
    assert len(expected) == len(modules) and worst <= 2e-3
    assert changed == expected - {k for k in expected if k.startswith("te0.encoder.layers.2.")}
    assert not [ln for ln in lines if "No LoRA keys" in ln or "unexpected" in ln.lower()]


def sdxl_config(model: Path, data: Path, out: Path, **extra) -> TrainConfig:
    values = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
              "resolution": "64", "min_bucket_reso": 64, "max_bucket_reso": 128, "network_dim": 4,
              "network_alpha": 2.0, "learning_rate": 1e-3, "max_train_steps": 4, "mixed_precision": "no",
              "seed": 7, "network_train_unet_only": True, "validation_every_n_steps": 0} | extra
    return TrainConfig(**values)


def test_every_step_conditions_on_each_images_size_crop_and_bucket(tmp_path, tiny_sdxl, mixed_sizes, monkeypatch):
    """UNet-only with cached captions: the UNet gets both encoders' hidden states, the pooled vector and, per image,
    add_time_ids = (original h, w, crop top, left, bucket h, w), mirrored crop included when flipped."""
    seen: list[tuple[str, list[int], tuple, tuple]] = []
    real = loop_module.per_sample_loss

    def spy(unet, scheduler, latents, cond, noise, timesteps, gamma=None, time_ids=None, **more):
        for i, path in enumerate(spy.paths):
            seen.append((Path(path).stem, time_ids[i].tolist(), tuple(cond.hidden[i].shape),
                         tuple(cond.pooled[i].shape)))
        return real(unet, scheduler, latents, cond, noise, timesteps, gamma, time_ids, **more)

    real_step = loop_module.train_step

    def step(parts, batch):
        spy.paths = batch["path"]
        assert parts.text_cache is not None  # frozen encoders, unshuffled captions: encoded once
        return real_step(parts, batch)

    monkeypatch.setattr(loop_module, "per_sample_loss", spy)
    monkeypatch.setattr(loop_module, "train_step", step)
    assert run(sdxl_config(tiny_sdxl, mixed_sizes, tmp_path / "run", max_train_steps=8, flip_aug=True)) == "done"

    ids = {tuple(t) for stem, t, _, _ in seen if stem == "wide"}
    assert ids == {(64, 101, 0, 18, 64, 64), (64, 101, 0, 19, 64, 64)}  # centre crop, and as seen mirrored
    assert {tuple(t) for stem, t, _, _ in seen if stem == "square"} == {(64, 64, 0, 0, 64, 64)}
    assert {(h, p) for _, _, h, p in seen} == {((77, 32 + 48), (24,))}  # TE1 + TE2 widths; TE2's projection


def test_sdxl_resume_continues_exactly(tmp_path, tiny_sdxl, dataset_dir):
    """Both text encoders trained (three optimizer groups): a run resumed from its step-3 state ends with the same
    LoRA as the uninterrupted run."""
    out = tmp_path / "run"
    cfg = sdxl_config(tiny_sdxl, dataset_dir, out, max_train_steps=6, save_every_n_steps=3, save_state=True,
                      network_train_unet_only=False, text_encoder_lr=[1e-3, 5e-4], network_dropout=0.1,
                      save_precision="float")
    assert run(cfg) == "done"
    straight = load_file(str(out / "lora.safetensors"))
    state = out / "lora-step00000003-state"
    assert state.is_dir()
    shutil.move(out / "lora.safetensors", tmp_path / "straight.safetensors")

    assert run(cfg.model_copy(update={"resume": str(state)})) == "done"
    steps = [e["step"] for e in read_events(out) if e["event"] == "step"]
    assert steps[-3:] == list(range(4, 7))
    resumed = load_file(str(out / "lora.safetensors"))
    assert resumed.keys() == straight.keys() and any(k.startswith("lora_te2_") for k in resumed)
    for key, value in straight.items():
        assert torch.allclose(resumed[key], value, atol=1e-5, rtol=1e-4), key


def test_a_preset_of_another_family_is_refused_before_loading(tmp_path, tiny_sdxl, dataset_dir):
    presets = Path(__file__).resolve().parents[2] / "presets"
    run_file = write_config(tmp_path / "run.toml", tiny_sdxl, dataset_dir, tmp_path / "run")
    result = cli("--config", str(presets / "sd15-anime.toml"), "--config", str(run_file))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the preset 'SD1.5 anime' is for SD1.x models but {tiny_sdxl} is an SDXL model; use an SDXL preset "
        "or another base model")
    assert not (tmp_path / "run").exists()
