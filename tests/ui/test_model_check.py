"""The base model's family, read torch-free from the file header, and the preset/model fit checked before Start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ui_helpers import ATTN2_K, write_header_only_safetensors

from app.form import USER_FIELDS, list_presets
from app.model_check import detect_model_family, family_problem


def presets_by_family() -> dict[str, dict]:
    return {p.family: p.record() for p in list_presets()}


def test_families_are_named_from_the_header(tmp_path):
    sd1 = write_header_only_safetensors(tmp_path / "sd15.safetensors", {ATTN2_K: (320, 768)})
    sd2 = write_header_only_safetensors(tmp_path / "sd21.safetensors", {ATTN2_K: (320, 1024)})
    xl = write_header_only_safetensors(tmp_path / "xl.safetensors",
                                       {"conditioner.embedders.1.model.ln_final.weight": (1280,)})
    assert detect_model_family(str(sd1)) == ("sd1", "Detected **SD1.x** base model.")
    assert detect_model_family(str(sd2))[0] == "sd2"
    family, line = detect_model_family(str(xl))
    assert family == "sdxl" and "not supported" in line


def test_missing_broken_and_hub_models_say_why(tmp_path):
    assert "does not exist" in detect_model_family(str(tmp_path / "nope.safetensors"))[1]
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x01")
    family, line = detect_model_family(str(broken))
    assert family is None and "broken.safetensors" in line and "\n" not in line
    assert "hub id" in detect_model_family("runwayml/stable-diffusion-v1-5")[1]
    assert detect_model_family("")[0] is None


def test_wrong_family_for_the_preset_is_refused_in_one_line(tmp_path):
    sd2 = write_header_only_safetensors(tmp_path / "sd21.safetensors", {ATTN2_K: (320, 1024)})
    xl = write_header_only_safetensors(tmp_path / "xl.safetensors", {"conditioner.embedders.1.x": (4,)})
    sd1_preset = presets_by_family()["sd1"]
    problem = family_problem(str(sd2), sd1_preset)
    assert sd1_preset["name"] in problem and "SD2.x" in problem and "\n" not in problem
    assert "SDXL" in family_problem(str(xl), None)
    assert family_problem(str(sd2), None) is None  # no preset: nothing to disagree with
    sd1 = write_header_only_safetensors(tmp_path / "sd15.safetensors", {ATTN2_K: (320, 768)})
    assert family_problem(str(sd1), sd1_preset) is None


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
