"""Base-model loading: offline single files (.safetensors, safe .ckpt), family detection, bundled configs, clip skip."""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from ldm_convert import diffusers_to_ldm  # tests/ is on sys.path (conftest)
from safetensors.torch import save_file

from training.contract.errors import UserError
from training.models.checkpoint import read_checkpoint
from training.models.detect import detect_family, read_key_shapes
from training.models.families import CONFIG_ROOT, SD1, SD2_V
from training.models.loading import load_base_model, load_single_file
from training.models.text import count_tokens, encode_prompts, final_layer_norm, tokenize

CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
LIGHTNING = "pytorch_lightning.callbacks.model_checkpoint"


def _pipe(folder: Path):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)


def _config_only_copy(folder: Path, dest: Path) -> Path:
    """A tiny model's own configs without weights: what assets/models/<family> is for real models."""
    for src in folder.rglob("*.json"):
        if src.parent.name != "tokenizer":
            target = dest / src.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target)
    return dest


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype == torch.float32, k
        assert torch.equal(sa[k], sb[k]), k


def _save_ckpt_with_lightning_callback(path: Path, state: dict, zipfile: bool = True) -> None:
    """Pickle like a real SD1 .ckpt: the weights plus a Lightning ModelCheckpoint object under ``callbacks``."""
    module = types.ModuleType(LIGHTNING)

    class ModelCheckpoint:
        pass

    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = LIGHTNING, "ModelCheckpoint"
    module.ModelCheckpoint = ModelCheckpoint
    names = ("pytorch_lightning", "pytorch_lightning.callbacks", LIGHTNING)
    sys.modules.update({n: module if n == LIGHTNING else types.ModuleType(n) for n in names})
    try:
        cb = ModelCheckpoint()
        cb.monitor, cb.best_model_score = "val/loss", 0.5
        torch.save({"state_dict": state, "callbacks": {ModelCheckpoint: cb}, "epoch": 3}, path,
                   _use_new_zipfile_serialization=zipfile)
    finally:
        for n in names:
            del sys.modules[n]


@pytest.fixture(scope="module")
def sd1_ldm(tiny_sd1, tmp_path_factory):
    """(pipeline, LDM state dict, config-only folder) for the tiny SD1 model."""
    pipe = _pipe(tiny_sd1)
    configs = _config_only_copy(tiny_sd1, tmp_path_factory.mktemp("sd1_configs"))
    return pipe, diffusers_to_ldm(pipe), configs


# --- 1. single .safetensors / .ckpt -> bit-identical components, offline -------------------------------------------

def test_sd1_safetensors_single_file_is_bit_identical(sd1_ldm, tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    pipe, state, configs = sd1_ldm
    path = tmp_path / "tiny-sd1.safetensors"
    save_file(state, str(path))
    assert detect_family(path) == "sd1"
    model = load_single_file(path, SD1, config_dir=configs)
    for part in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(model, part), getattr(pipe, part))
    assert tokenize(model.tokenizer, ["a photo of a cat"])[0, :7].tolist() == CAT_IDS
    assert model.tokenizer.pad_token_id == 49407
    assert model.noise_scheduler.config.prediction_type == "epsilon"
    assert model.noise_scheduler.config.beta_schedule == "scaled_linear"


def test_sd2v_safetensors_single_file_is_bit_identical(tiny_sd2v, tmp_path):
    pipe = _pipe(tiny_sd2v)
    state = diffusers_to_ldm(pipe)
    assert any(k.endswith("attn.in_proj_weight") for k in state)  # OpenCLIP layout, fused q/k/v
    path = tmp_path / "tiny-sd2v.safetensors"
    save_file(state, str(path))
    assert detect_family(path) == "sd2"
    model = load_single_file(path, SD2_V, config_dir=_config_only_copy(tiny_sd2v, tmp_path / "cfg"))
    for part in ("unet", "vae", "text_encoder"):
        _assert_same_weights(getattr(model, part), getattr(pipe, part))
    assert model.tokenizer.pad_token_id == 0  # SD2 pads with "!"
    assert tokenize(model.tokenizer, ["a photo of a cat"])[0, :8].tolist() == [*CAT_IDS, 0]
    assert model.noise_scheduler.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy-pickle"])
def test_ckpt_with_lightning_callback_loads_safely(sd1_ldm, tmp_path, zipfile):
    pipe, state, configs = sd1_ldm
    path = tmp_path / "tiny-sd1.ckpt"
    _save_ckpt_with_lightning_callback(path, state, zipfile)
    assert "pytorch_lightning" not in sys.modules
    read = read_checkpoint(path)
    assert read.keys() == state.keys()
    assert all(torch.equal(read[k], state[k]) for k in state)
    assert "pytorch_lightning" not in sys.modules  # nothing imported Lightning
    model = load_single_file(path, SD1, config_dir=configs)
    _assert_same_weights(model.unet, pipe.unet)
    _assert_same_weights(model.text_encoder, pipe.text_encoder)


def test_file_that_does_not_fit_the_bundled_config_is_a_user_error(sd1_ldm, tmp_path):
    """load_base_model uses the full-size SD1 config; a tiny SD1 file must fail as one line, not a traceback."""
    path = tmp_path / "tiny.safetensors"
    save_file(sd1_ldm[1], str(path))
    with pytest.raises(UserError, match="does not load as sd1") as err:
        load_base_model(str(path))
    assert "\n" not in str(err.value)


class _RunsShell:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Arbitrary:
    pass


@pytest.mark.parametrize("payload", ["os.system", "custom class"])
def test_ckpt_with_forbidden_global_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _RunsShell() if payload == "os.system" else _Arbitrary()
    evil.marker = marker
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": evil}, path)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg and ".safetensors" in msg and "\n" not in msg
    assert not marker.exists()


def test_plain_pickle_is_refused(tmp_path):
    path = tmp_path / "old.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "cfg": _Arbitrary()}, protocol=2))
    with pytest.raises(UserError, match=r"convert it to \.safetensors"):
        read_checkpoint(path)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_checkpoint(tmp_path / "nope.safetensors")


# --- 3. family detection ----------------------------------------------------------------------------------------

ATTN2_K = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
SYNTHETIC = {
    "sd1": {ATTN2_K: (1, 768), "cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)},
    "sd2": {ATTN2_K: (1, 1024), "cond_stage_model.model.token_embedding.weight": (2, 4)},
    "sdxl": {ATTN2_K: (1, 2048), "model.diffusion_model.label_emb.0.0.weight": (2, 4),
             "conditioner.embedders.1.model.positional_embedding": (2, 4)},
}


def _header_file(path: Path, shapes: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()}, str(path))
    return path


@pytest.mark.parametrize("family", SYNTHETIC)
def test_detect_family_from_safetensors_header(tmp_path, family):
    path = _header_file(tmp_path / f"{family}.safetensors", SYNTHETIC[family])
    assert read_key_shapes(path) == SYNTHETIC[family]
    assert detect_family(path) == family
    assert detect_family(SYNTHETIC[family]) == family


def test_detect_family_from_text_encoder_prefix_and_folders(tiny_sd1, tiny_sd2v):
    assert detect_family({"cond_stage_model.model.positional_embedding": (77, 32)}) == "sd2"
    assert detect_family({"cond_stage_model.transformer.text_model.x": (1,)}) == "sd1"
    assert detect_family(tiny_sd1) == "sd1"
    assert detect_family(tiny_sd2v) == "sd2"
    with pytest.raises(UserError, match="not a Stable Diffusion"):
        detect_family({"some.other.model": (3,)})


def test_sdxl_file_is_loaded_as_sdxl_and_v2_flag_refused(tmp_path):
    """SDXL is picked from the header; kohya's v2 = true contradicts it. Real loading: test_sdxl_loading.py."""
    path = _header_file(tmp_path / "sd_xl_base_1.0.safetensors", SYNTHETIC["sdxl"])
    with pytest.raises(UserError) as err:
        load_base_model(str(path), v2=True)
    assert str(err.value) == f"{path}: this is an SDXL model but v2 = true; remove v2"
    with pytest.raises(UserError) as err:  # a header-only stub is no loadable SDXL model: one line, no traceback
        load_base_model(str(path))
    assert str(err.value).startswith(f"{path}: does not load as sdxl: ") and "\n" not in str(err.value)


def test_v2_flag_contradicting_the_file_is_refused(tmp_path):
    path = _header_file(tmp_path / "sd2.safetensors", SYNTHETIC["sd2"])
    with pytest.raises(UserError, match="v2 = false"):
        load_base_model(str(path), v2=False)


def test_missing_path_and_offline_hub_id_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_base_model(str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="download the model or give a local path"):
        load_base_model("nonexistent-org-xyz/no-such-model")


def test_diffusers_folder_loads_with_family_from_configs(tiny_sd1, tiny_sd2v):
    sd1 = load_base_model(str(tiny_sd1))
    assert sd1.family.name == "sd1" and sd1.noise_scheduler.config.prediction_type == "epsilon"
    sd2v = load_base_model(str(tiny_sd2v))
    assert sd2v.family.name == "sd2-v" and sd2v.noise_scheduler.config.prediction_type == "v_prediction"
    assert load_base_model(str(tiny_sd2v), v_parameterization=False).family.name == "sd2"
    assert sd2v.unet.dtype == torch.float32


# --- 4. bundled full-size configs build the real architectures ----------------------------------------------------

EXPECTED = {  # parameter counts of the public models: UNet, VAE, CLIP text encoder
    "sd1": (859_520_964, 83_653_863, 123_060_480),
    "sd2": (865_910_724, 83_653_863, 340_387_840),
    "sd2-v": (865_910_724, 83_653_863, 340_387_840),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_bundled_configs_build_full_size_models_on_meta(name):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = CONFIG_ROOT / name
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder", local_files_only=True))
    counts = tuple(sum(p.numel() for p in m.parameters()) for m in (unet, vae, te))
    assert counts == EXPECTED[name]
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert scheduler.config.prediction_type == ("v_prediction" if name == "sd2-v" else "epsilon")
    assert unet.config.upcast_attention == (name == "sd2-v")
    assert vae.config.scaling_factor == 0.18215


@pytest.mark.parametrize("name", ["sd1", "sd2"])
def test_real_ldm_layout_maps_onto_bundled_configs(name):
    """Every tensor of a real-layout file (SD2: 24 OpenCLIP blocks, the last dropped) lands on a parameter."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from ldm_convert import open_clip_to_ldm, unet_to_ldm, vae_to_ldm
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = CONFIG_ROOT / name
    te_config = CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder", local_files_only=True)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        te = CLIPTextModel(te_config)
        full_te = CLIPTextModel(CLIPTextConfig(**{**te_config.to_dict(), "num_hidden_layers": 24}))

    def same(converted: dict, model: torch.nn.Module) -> None:
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in converted.items()} == expected

    same(sfu.convert_ldm_unet_checkpoint(_prefixed("model.diffusion_model.", unet_to_ldm(unet)), unet.config), unet)
    same(sfu.convert_ldm_vae_checkpoint(_prefixed("first_stage_model.", vae_to_ldm(vae)), vae.config), vae)
    if name == "sd2":
        converted = sfu.convert_open_clip_checkpoint(te, open_clip_to_ldm(full_te))
        same({k.removeprefix("text_model."): v for k, v in converted.items()}, te)


def _prefixed(prefix: str, state: dict) -> dict:
    return {prefix + k: v for k, v in state.items()}


# --- 5. clip skip ------------------------------------------------------------------------------------------------

def test_clip_skip_matches_kohya_convention(tiny_sd1):
    pipe = _pipe(tiny_sd1)
    te, tok = pipe.text_encoder, pipe.tokenizer
    captions = ["a photo of a cat", "red circle"]
    with torch.no_grad():
        ids = tokenize(tok, captions)
        hidden = te(ids, output_hidden_states=True).hidden_states
        skip1 = encode_prompts(te, tok, captions, clip_skip=1)
        skip2 = encode_prompts(te, tok, captions, clip_skip=2)
        norm = final_layer_norm(te)
        assert skip1.shape == skip2.shape == (2, 77, te.config.hidden_size)
        assert torch.allclose(skip1, norm(hidden[-1]))
        assert torch.equal(skip2, norm(hidden[-2]))
        assert not torch.allclose(skip1, skip2)


def test_count_tokens_excludes_special_tokens(tiny_sd1):
    tok = _pipe(tiny_sd1).tokenizer
    assert count_tokens(tok, "a photo of a cat") == 5
    assert count_tokens(tok, "cat " * 100) == 100
