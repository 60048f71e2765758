"""The form registry: every TrainConfig field has a component; values convert both ways; errors are one line."""

from __future__ import annotations

from app.form import config_to_values, default_values, field_specs, list_presets, values_to_config
from training.config import TrainConfig


def test_registry_covers_every_field():
    specs = field_specs()
    assert [s.name for s in specs] == list(TrainConfig.model_fields)
    kinds = {s.name: s.kind for s in specs}
    assert kinds["optimizer_type"] == "choice"
    assert kinds["v2"] == "tristate"
    assert kinds["enable_bucket"] == "checkbox"
    assert kinds["network_dim"] == "number"
    dim = next(s for s in specs if s.name == "network_dim")
    assert (dim.minimum, dim.maximum, dim.integer) == (1, 1024, True)


def test_components_build_for_every_field():
    import gradio as gr

    from app.form import make_component

    defaults = default_values()
    with gr.Blocks():
        comps = {s.name: make_component(s, defaults[s.name]) for s in field_specs()}
    assert comps["network_dim"].label == "network_dim"
    assert "rank" in comps["network_dim"].info.lower()


def test_defaults_round_trip():
    cfg, error = values_to_config(default_values())
    assert error is None
    assert cfg == TrainConfig()


def test_bad_value_gives_one_line_naming_the_key():
    values = default_values() | {"network_dim": 0}
    cfg, error = values_to_config(values)
    assert cfg is None
    assert "network_dim" in error and "\n" not in error
    _, error = values_to_config(default_values() | {"optimizer_type": "SGD"})
    assert "optimizer_type" in error and "\n" not in error


def test_empty_optional_text_and_auto_mean_unset():
    cfg, error = values_to_config(default_values() | {"resume": "  ", "v2": "auto", "unet_lr": None})
    assert error is None
    assert cfg.resume is None and cfg.v2 is None and cfg.unet_lr is None
    assert config_to_values(cfg)["resume"] == ""


def test_preset_values_land_in_the_form():
    presets = {p.key: p for p in list_presets()}
    anime = presets["sd15-anime"]
    assert anime.name == "SD1.5 anime" and anime.family == "sd1" and anime.description
    values = anime.values()
    assert values["clip_skip"] == 2
    assert values["shuffle_caption"] is True
    assert values["optimizer_type"] == "AdamW8bit"
    assert set(values) == set(TrainConfig.model_fields)


def test_every_preset_value_says_why_and_the_reason_becomes_the_tooltip():
    from app.form import inline_reasons

    for preset in list_presets():
        assert set(preset.settings) <= set(preset.reasons), f"{preset.key}: a value without its reason"
    text = 'sample_prompts = "a #1 fan --n blurry"   # the prompt keeps its hash\nclip_skip = 2\nv = 1 # x'
    assert inline_reasons(text) == {"sample_prompts": "the prompt keeps its hash", "v": "x"}
