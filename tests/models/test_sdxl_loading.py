"""SDXL base-model loading, offline: an SGM-layout single file (.safetensors and a pickled .ckpt) built from a tiny
random SDXL pipeline loads bit-identically (UNet incl. label_emb, VAE, CLIP-L TE1, OpenCLIP TE2 with its projection),
a diffusers folder loads, and a replacement VAE loads from an LDM file, a bare VAE file or a folder.

The bundled full-size configs cannot describe tiny weights, so these tests hand the tiny pipeline's own folder as the
config (``config_dir=`` / a Family copy); test_sdxl_names.py checks the bundled configs against the real layout.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from ldm_convert import SDXL_CLIP, SDXL_OPEN_CLIP, diffusers_to_ldm, vae_to_ldm  # tests/ is on sys.path
from safetensors.torch import save_file
from tiny_models import build_tiny_pipeline

from training.contract.errors import UserError
from training.models.detect import detect_family
from training.models.families import SDXL
from training.models.loading import load_base_model, load_single_file, load_vae
from training.models.text import encode_text, tokenize

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat" with BOS/EOS
PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def tiny_xl(tmp_path_factory):
    """(original pipeline, its diffusers folder, its SGM-layout state dict, a .safetensors file of it)."""
    root = tmp_path_factory.mktemp("tiny_sdxl")
    pipe = build_tiny_pipeline("sdxl")
    pipe.save_pretrained(root / "model")
    state = diffusers_to_ldm(pipe)
    path = root / "tiny-sdxl.safetensors"
    save_file(state, str(path))
    return pipe, root / "model", state, path


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == torch.float32, k
        assert torch.equal(sa[k], sb[k]), k


def _assert_model_is(model, pipe) -> None:
    """Every component equals the pipeline's, tokenizers pad as SDXL's do, and the conditioning is the pipeline's."""
    assert model.family is SDXL
    for part in PARTS:
        _assert_same_weights(getattr(model, part), getattr(pipe, part))
    assert model.tokenizer.pad_token_id == 49407 and model.tokenizer_2.pad_token_id == 0  # "<|endoftext|>", "!"
    assert tokenize(model.tokenizer, ["a photo of a cat"])[0, :8].tolist() == [*CAT_IDS, 49407]
    assert tokenize(model.tokenizer_2, ["a photo of a cat"])[0, :8].tolist() == [*CAT_IDS, 0]
    assert model.noise_scheduler.config.prediction_type == "epsilon"
    with torch.no_grad():
        ours = encode_text(model.text_encoders, model.tokenizers, ["a photo of a cat"])
        hidden, _, pooled, _ = pipe.encode_prompt("a photo of a cat", device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(ours.hidden, hidden) and torch.equal(ours.pooled, pooled)


def test_converted_file_has_the_sgm_layout(tiny_xl):
    pipe, _, state, path = tiny_xl
    assert detect_family(path) == "sdxl"
    assert "model.diffusion_model.label_emb.0.0.weight" in state
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight" in state  # depth 2
    assert f"{SDXL_CLIP}encoder.layers.2.self_attn.q_proj.weight" in state
    fused = state[f"{SDXL_OPEN_CLIP}transformer.resblocks.0.attn.in_proj_weight"]
    assert fused.shape == (3 * 48, 48)
    projection = state[f"{SDXL_OPEN_CLIP}text_projection"]
    assert projection.shape == (48, 24) and torch.equal(projection, pipe.text_encoder_2.text_projection.weight.T)


def test_single_safetensors_loads_bit_identical_offline(tiny_xl):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    pipe, folder, _, path = tiny_xl
    _assert_model_is(load_single_file(path, SDXL, config_dir=folder), pipe)


def test_ckpt_loads_bit_identical_through_the_safe_unpickler(tiny_xl, tmp_path, monkeypatch):
    pipe, folder, state, _ = tiny_xl
    path = tmp_path / "tiny-sdxl.ckpt"
    torch.save({"state_dict": state, "global_step": 1000}, path)
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = load_single_file(path, SDXL, config_dir=folder)
    assert calls == [True]  # read once, never with the code-executing unpickler
    _assert_model_is(model, pipe)


def test_diffusers_folder_loads_as_sdxl(tiny_xl):
    pipe, folder, _, _ = tiny_xl
    _assert_model_is(load_base_model(str(folder)), pipe)


@pytest.mark.parametrize(("dropped", "part"), [
    (SDXL_OPEN_CLIP, "text encoder 2"),  # a file saved without TE2 (e.g. a broken merge)
    (SDXL_CLIP.removesuffix("text_model."), "text encoder"),
    ("first_stage_model.", "VAE"),
])
def test_file_without_a_component_is_a_one_line_error(tiny_xl, tmp_path, dropped, part):
    _, folder, state, _ = tiny_xl
    path = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith(dropped)}, str(path))
    with pytest.raises(UserError) as err:
        load_single_file(path, SDXL, config_dir=folder)
    msg = str(err.value)
    assert msg.startswith(f"{path}: does not load as sdxl: {part} (") and "\n" not in msg


def test_file_with_some_te2_tensors_missing_is_refused(tiny_xl, tmp_path):
    _, folder, state, _ = tiny_xl
    path = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in state.items() if ".resblocks.2." not in k}, str(path))
    with pytest.raises(UserError, match=r"text encoder 2 weights missing from the file \(16 tensors"):
        load_single_file(path, SDXL, config_dir=folder)


@pytest.mark.parametrize(("flags", "message"), [
    ({"v2": True}, "this is an SDXL model but v2 = true; remove v2"),
    ({"v_parameterization": True}, "v-prediction SDXL models are not supported yet"),
])
def test_contradicting_flags_are_refused_before_loading(tiny_xl, flags, message):
    path = tiny_xl[3]
    with pytest.raises(UserError) as err:
        load_base_model(str(path), **flags)
    assert str(err.value).startswith(f"{path}: {message}")


def test_tiny_file_against_the_bundled_full_size_configs_is_one_line(tiny_xl):
    """load_base_model picks SDXL from the file and uses assets/models/sdxl: the tiny shapes cannot fit."""
    with pytest.raises(UserError) as err:
        load_base_model(str(tiny_xl[3]))
    assert "does not load as sdxl: UNet (" in str(err.value) and "\n" not in str(err.value)


# --- replacement VAE (kohya's ``vae``) -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xl_family(tiny_xl):
    """SDXL whose config folder is the tiny pipeline's: load_vae reads the VAE config from ``family.config_dir``."""
    return dataclasses.replace(SDXL, config_dir=tiny_xl[1])


def _vae_source(kind: str, tiny_xl, tmp_path: Path) -> Path:
    pipe, folder, _, _ = tiny_xl
    bare = {k: v.detach().clone().contiguous() for k, v in vae_to_ldm(pipe.vae).items()}
    if kind == "ldm":
        path = tmp_path / "sdxl_vae_ldm.safetensors"
        save_file({f"first_stage_model.{k}": v for k, v in bare.items()}, str(path))
    elif kind == "bare":
        path = tmp_path / "sdxl_vae.safetensors"
        save_file(bare, str(path))
    elif kind == "bare-ckpt":
        path = tmp_path / "sdxl_vae.ckpt"
        torch.save({"state_dict": bare}, path)
    elif kind == "diffusers-file":  # e.g. a downloaded diffusion_pytorch_model.safetensors of an fp16-fix VAE
        path = folder / "vae" / "diffusion_pytorch_model.safetensors"
    else:
        path = folder if kind == "model-folder" else folder / "vae"
    return path


@pytest.mark.parametrize("kind", ["ldm", "bare", "bare-ckpt", "diffusers-file", "model-folder", "vae-folder"])
def test_replacement_vae_loads_bit_identical(tiny_xl, xl_family, tmp_path, kind):
    vae = load_vae(str(_vae_source(kind, tiny_xl, tmp_path)), xl_family)
    _assert_same_weights(vae, tiny_xl[0].vae)
    assert vae.config.scaling_factor == 0.13025 and vae.config.force_upcast is True


@pytest.mark.parametrize("content", ["lora", "unet-only"])
def test_a_file_that_is_not_a_vae_is_a_one_line_error(tiny_xl, xl_family, tmp_path, content):
    state = tiny_xl[2]
    if content == "lora":
        tensors = {"lora_unet_x.lora_down.weight": torch.zeros(2, 3), "lora_unet_x.alpha": torch.tensor(1.0)}
    else:
        tensors = {k: v for k, v in state.items() if k.startswith("model.diffusion_model.")}
    path = tmp_path / "not_a_vae.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(UserError) as err:
        load_vae(str(path), xl_family)
    msg = str(err.value)
    assert msg.startswith(f"vae {path}: not a VAE for sdxl (") and "\n" not in msg


def test_missing_vae_path_names_the_setting(xl_family, tmp_path):
    with pytest.raises(UserError, match=r"^vae .*nope\.safetensors: no such file or folder$"):
        load_vae(str(tmp_path / "nope.safetensors"), xl_family)
