"""The base model's family, read torch-free from the file header, and the preset/model fit checked before Start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ui_helpers import ATTN2_K, write_header_only_safetensors

from app.form import USER_FIELDS, list_presets, presets_for_family
from app.model_check import detect_model_family, family_problem

SDXL_KEY = "conditioner.embedders.1.model.ln_final.weight"  # SDXL's second text encoder: the family marker


def preset_record(key: str) -> dict:
    return next(p.record() for p in list_presets() if p.key == key)


def test_families_are_named_from_the_header(tmp_path):
    sd1 = write_header_only_safetensors(tmp_path / "sd15.safetensors", {ATTN2_K: (320, 768)})
    sd2 = write_header_only_safetensors(tmp_path / "sd21.safetensors", {ATTN2_K: (320, 1024)})
    xl = write_header_only_safetensors(tmp_path / "xl.safetensors", {SDXL_KEY: (1280,)})
    assert detect_model_family(str(sd1)) == ("sd1", "Detected **SD1.x** base model.")
    assert detect_model_family(str(sd2))[0] == "sd2"
    family, line = detect_model_family(str(xl))
    assert family == "sdxl" and line.startswith("Detected **SDXL** base model.") and "not supported" not in line
    assert "1024" in line and "clip_skip" in line and "\n" not in line


def test_sdxl_is_recognised_by_either_marker_and_trains(tmp_path):
    """A UNet-only SDXL file (label_emb, no text encoders) is SDXL too, whatever its cross-attention width says."""
    unet_only = write_header_only_safetensors(tmp_path / "xl-unet.safetensors", {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816), ATTN2_K: (640, 2048)})
    assert detect_model_family(str(unet_only))[0] == "sdxl"
    assert family_problem(str(unet_only), None) is None  # SDXL is trained now: nothing to refuse without a preset
    assert family_problem(str(unet_only), preset_record("sdxl-photoreal")) is None


def test_missing_broken_and_hub_models_say_why(tmp_path):
    assert "does not exist" in detect_model_family(str(tmp_path / "nope.safetensors"))[1]
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x01")
    family, line = detect_model_family(str(broken))
    assert family is None and "broken.safetensors" in line and "\n" not in line
    assert "hub id" in detect_model_family("stabilityai/stable-diffusion-xl-base-1.0")[1]
    assert detect_model_family("")[0] is None


def test_wrong_family_for_the_preset_is_refused_in_one_line(tmp_path):
    sd1 = write_header_only_safetensors(tmp_path / "sd15.safetensors", {ATTN2_K: (320, 768)})
    sd2 = write_header_only_safetensors(tmp_path / "sd21.safetensors", {ATTN2_K: (320, 1024)})
    xl = write_header_only_safetensors(tmp_path / "xl.safetensors", {"conditioner.embedders.1.x": (4,)})
    sd1_preset, xl_preset = preset_record("sd15-anime"), preset_record("sdxl-anime")

    problem = family_problem(str(xl), sd1_preset)  # SD1.5's 512 px and clip skip 2 on an SDXL model
    assert problem == (f"the preset 'SD1.5 anime' is for SD1.x models but {xl} is an SDXL model; use an SDXL preset "
                       "or another base model")
    problem = family_problem(str(sd1), xl_preset)  # and the reverse
    assert "'SDXL anime' is for SDXL models" in problem and "is an SD1.x model; use an SD1.x preset" in problem
    assert "\n" not in problem
    problem = family_problem(str(sd2), sd1_preset)
    assert sd1_preset["name"] in problem and "SD2.x" in problem and "\n" not in problem

    assert family_problem(str(xl), xl_preset) is None
    assert family_problem(str(sd1), sd1_preset) is None
    assert family_problem(str(sd2), None) is None  # no preset: nothing to disagree with
    assert family_problem("stabilityai/stable-diffusion-xl-base-1.0", sd1_preset) is None  # the trainer checks it


def test_presets_are_offered_by_the_model_family():
    presets = list_presets()
    assert [p.key for p in presets_for_family(presets, "sdxl")] == ["sdxl-anime", "sdxl-photoreal"]
    assert [p.key for p in presets_for_family(presets, "sd1")] == ["sd15-anime", "sd15-photoreal"]
    assert [p.key for p in presets_for_family(presets, "sd2")] == ["sd21-768v-photoreal"]
    every = [p.key for p in presets]
    assert [p.key for p in presets_for_family(presets, None)] == every  # no model yet, hub id, unreadable file
    assert [p.key for p in presets_for_family(presets, "sd3")] == every  # a family without presets: all of them


def test_presets_leave_what_the_user_brought():
    for preset in list_presets():
        assert not USER_FIELDS & set(preset.settings), f"{preset.key} sets a user field"


def test_detection_stays_torch_free(tmp_path):
    model = write_header_only_safetensors(tmp_path / "m.safetensors", {ATTN2_K: (320, 768)})
    probe = (f"import sys; from app.model_check import detect_model_family; detect_model_family({str(model)!r}); "
             "print('torch' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"
