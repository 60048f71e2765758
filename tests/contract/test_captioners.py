"""The caption model catalogue, the user's own model folders, the Hugging Face cache check, and what a preset's
``[preset]`` table suggests for captioning: on real folders and the shipped presets/*.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.contract.captioners import (
    CATALOGUE,
    DEFAULT_MODEL,
    availability,
    catalogue,
    hub_cached,
    known_model,
    local_models,
)
from training.contract.presets import PresetInfo

PRESETS = Path(__file__).resolve().parents[2] / "presets"


def tagger_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "selected_tags.csv").write_text("tag_id,name,category,count\n", encoding="utf-8")
    return folder


def captioner_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "blip"}', encoding="utf-8")
    return folder


def test_the_catalogue_holds_the_known_taggers_and_captioners():
    taggers = {m.repo_id for m in catalogue("tagger")}
    assert taggers == {f"SmilingWolf/{name}" for name in (
        "wd-vit-tagger-v3", "wd-swinv2-tagger-v3", "wd-convnext-tagger-v3", "wd-eva02-large-tagger-v3",
        "wd-v1-4-moat-tagger-v2")}
    captioners = {m.repo_id for m in catalogue("captioner")}
    assert {"Salesforce/blip-image-captioning-base", "Salesforce/blip-image-captioning-large",
            "florence-community/Florence-2-base", "Qwen/Qwen2.5-VL-3B-Instruct"} <= captioners
    assert all(m.description and m.size.startswith("about ") for m in CATALOGUE)
    assert len({m.repo_id for m in CATALOGUE}) == len(CATALOGUE)
    # The VLMs carry the prompt they get by default; BLIP takes none.
    assert known_model("florence-community/Florence-2-base").prompt == "<DETAILED_CAPTION>"
    assert known_model("Qwen/Qwen2.5-VL-3B-Instruct").prompt.startswith("Describe")
    assert known_model("Salesforce/blip-image-captioning-base").prompt == ""
    assert {DEFAULT_MODEL[k] for k in ("tagger", "captioner")} <= {m.repo_id for m in CATALOGUE}


def test_a_known_model_is_found_by_hub_id_or_short_name_in_any_case():
    assert known_model("wd-vit-tagger-v3").repo_id == "SmilingWolf/wd-vit-tagger-v3"
    assert known_model(" SmilingWolf/WD-EVA02-Large-Tagger-v3 ").repo_id == "SmilingWolf/wd-eva02-large-tagger-v3"
    assert known_model("someone/else") is None and known_model("") is None


def test_local_models_are_the_folders_under_models_taggers_and_captioners(tmp_path):
    models = tmp_path / "models"
    wd = tagger_folder(models / "taggers" / "b-wd")
    blip = captioner_folder(models / "captioners" / "blip")
    misplaced = tagger_folder(models / "captioners" / "a-wd")  # counted by what it holds, not where it lies
    half = models / "taggers" / "half"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"onnx")  # no tag list: not a tagger
    (models / "taggers" / "notes.txt").write_text("a file, not a folder", encoding="utf-8")
    assert [(m.path, m.kind) for m in local_models(tmp_path, "tagger")] == [(wd, "tagger"), (misplaced, "tagger")]
    assert [(m.path, m.label) for m in local_models(tmp_path, "captioner")] == [(blip, "local: blip")]
    assert len(local_models(tmp_path)) == 3
    assert local_models(tmp_path / "no-such-data-dir", "tagger") == []


def test_the_hub_cache_is_read_from_its_folder_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    snapshot = tmp_path / "hub" / "models--SmilingWolf--wd-vit-tagger-v3" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert not hub_cached("SmilingWolf/wd-vit-tagger-v3", "tagger")  # a snapshot without its model file
    (snapshot / "model.onnx").write_bytes(b"onnx")
    assert hub_cached("SmilingWolf/wd-vit-tagger-v3", "tagger")
    assert not hub_cached("SmilingWolf/wd-swinv2-tagger-v3", "tagger")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # HF_HOME/hub when HF_HUB_CACHE is not set
    assert hub_cached("SmilingWolf/wd-vit-tagger-v3", "tagger")


@pytest.mark.parametrize(("offline", "cached", "says"), [
    ("1", False, "needs the internet once: the hub is offline (HF_HUB_OFFLINE=1)"),
    ("0", False, "downloads once (about 380 MB)"),
    ("1", True, "is in the Hugging Face cache: it loads offline"),
])
def test_availability_says_whether_a_hub_model_loads_now(tmp_path, monkeypatch, offline, cached, says):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    if cached:
        snapshot = tmp_path / "hub" / "models--SmilingWolf--wd-vit-tagger-v3" / "snapshots" / "abc"
        snapshot.mkdir(parents=True)
        (snapshot / "model.onnx").write_bytes(b"onnx")
    line = availability(known_model("wd-vit-tagger-v3"), tmp_path / "data")
    assert says in line and "\n" not in line
    if offline == "1" and not cached:  # how to get it anyway: the download command and the folder it is listed from
        assert "hf download SmilingWolf/wd-vit-tagger-v3" in line
        assert str(tmp_path / "data" / "models" / "taggers") in line


def test_anime_presets_suggest_a_tagger_and_photoreal_ones_a_captioner():
    suggestions = {p.stem: PresetInfo.read(p).caption_suggestion() for p in sorted(PRESETS.glob("*.toml"))}
    assert len(suggestions) >= 5
    for key, (kind, model, reason) in suggestions.items():
        assert kind == ("tagger" if "anime" in key else "captioner"), key
        assert known_model(model).kind == kind
        assert reason.startswith(PresetInfo.read(PRESETS / f"{key}.toml").name + ": ")
    assert "booru tags suit anime bases" in suggestions["sd15-anime"][2]


def test_a_preset_table_without_or_with_a_bad_captioner_suggests_nothing():
    assert PresetInfo.from_table("x", {"name": "X"}).caption_suggestion() is None
    assert PresetInfo.from_table("x", {"name": "X", "captioner": "sentences"}).captioner == ""
    assert PresetInfo.from_table("x", {"name": "X", "captioner": 3}).caption_suggestion() is None


def test_a_preset_model_by_short_name_becomes_its_hub_id_and_none_the_default():
    short = PresetInfo.from_table("x", {"name": "X", "captioner": "tagger", "caption_model": "wd-swinv2-tagger-v3"})
    assert short.caption_suggestion()[:2] == ("tagger", "SmilingWolf/wd-swinv2-tagger-v3")
    default = PresetInfo.from_table("x", {"name": "X", "captioner": "captioner"})
    assert default.caption_suggestion()[:2] == ("captioner", DEFAULT_MODEL["captioner"])
    own = PresetInfo.from_table("x", {"name": "X", "captioner": "captioner", "caption_model": "me/my-blip"})
    assert own.caption_suggestion()[1] == "me/my-blip"
