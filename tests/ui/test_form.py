"""The form registry: every TrainConfig field has a component; values convert both ways; errors are one line."""

from __future__ import annotations

import math
import re
import tomllib

import pytest
from ui_helpers import NOISE_FILTERS

from app.form import PRESETS_DIR, config_to_values, default_values, field_specs, list_presets, values_to_config
from training.contract.config import TrainConfig


def test_registry_covers_every_field():
    specs = field_specs()
    assert [s.name for s in specs] == list(TrainConfig.model_fields)
    kinds = {s.name: s.kind for s in specs}
    assert kinds["optimizer_type"] == "choice"
    assert kinds["v2"] == "tristate"
    assert kinds["enable_bucket"] == "checkbox"
    assert kinds["network_dim"] == "number"
    dim = next(s for s in specs if s.name == "network_dim")
    assert (dim.bounds.low, dim.bounds.high, dim.integer) == (1, 1024, True)
    assert "(allowed: 1 <= x <= 1024)" in dim.info


def test_components_build_for_every_field():
    import gradio as gr

    from app.form import make_component

    defaults = default_values()
    with gr.Blocks():
        comps = {s.name: make_component(s, defaults[s.name]) for s in field_specs()}
    assert comps["network_dim"].label == "Rank" and comps["network_dim"].elem_id == "cfg-network_dim"
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


def test_text_encoder_lr_is_text_that_keeps_a_pair():
    """SDXL's two encoders take 'TE1, TE2'; the form shows a pair that way and the config parses the text."""
    specs = {s.name: s for s in field_specs()}
    assert specs["text_encoder_lr"].kind == "text" and specs["text_encoder_lr"].optional
    cfg, error = values_to_config(default_values() | {"text_encoder_lr": " 1e-5, 5e-6 "})
    assert error is None and cfg.text_encoder_lr == [1e-5, 5e-6] and cfg.text_encoder_lrs == (1e-5, 5e-6)
    assert config_to_values(cfg)["text_encoder_lr"] == "1e-05, 5e-06"
    cfg, _ = values_to_config(default_values() | {"text_encoder_lr": "6e-5"})
    assert cfg.text_encoder_lr == 6e-5 and config_to_values(cfg)["text_encoder_lr"] == "6e-05"
    cfg, _ = values_to_config(default_values() | {"text_encoder_lr": ""})
    assert cfg.text_encoder_lr is None  # empty: unset, the learning_rate applies


def test_bad_text_encoder_lr_gives_one_line_naming_it():
    for text in ("abc", "1e-5, 2e-5, 3e-5", "-1"):
        cfg, error = values_to_config(default_values() | {"text_encoder_lr": text})
        assert cfg is None and "text_encoder_lr" in error and repr(text) in error and "\n" not in error, error


def test_a_pair_survives_save_and_load_toml(tmp_path):
    from training.contract.config_io import load_config, save_config

    cfg, _ = values_to_config(default_values() | {"text_encoder_lr": "1e-5, 5e-6", "vae": str(tmp_path / "v")})
    save_config(cfg, tmp_path / "pair.toml")
    assert "text_encoder_lr = [" in (tmp_path / "pair.toml").read_text(encoding="utf-8")
    loaded, _ = load_config(tmp_path / "pair.toml")
    assert loaded == cfg
    assert config_to_values(loaded)["text_encoder_lr"] == "1e-05, 5e-06"


def test_sdxl_fields_show_and_the_vae_is_the_users():
    from app.form import USER_FIELDS

    specs = {s.name: s for s in field_specs()}
    assert (specs["vae"].kind, specs["vae"].section) == ("text", "model")
    assert (specs["cache_text_encoder_outputs"].kind, specs["cache_text_encoder_outputs"].section) == (
        "checkbox", "dataset")
    assert "vae" in USER_FIELDS  # a path on this computer: picking a preset never replaces it


def test_sdxl_presets_are_valid_configs_for_1024_px_unet_only():
    from training.plan.preflight import advice

    presets = {p.key: p for p in list_presets()}
    for key in ("sdxl-anime", "sdxl-photoreal"):
        preset = presets[key]
        assert preset.family == "sdxl" and preset.description and preset.loss_band
        cfg, error = values_to_config(preset.values())
        assert error is None, error
        assert cfg.resolution == "1024" and (cfg.min_bucket_reso, cfg.max_bucket_reso) == (512, 2048)
        assert cfg.bucket_reso_steps == 64
        assert cfg.network_train_unet_only and cfg.text_encoder_lr is None and cfg.trained_text_encoders(2) == []
        assert cfg.gradient_checkpointing and cfg.cache_latents and cfg.mixed_precision == "bf16"
        assert cfg.optimizer_type == "AdamW8bit" and cfg.lr_scheduler == "cosine" and cfg.lr_warmup_steps == 0.05
        assert cfg.min_snr_gamma == 5 and cfg.clip_skip == 1 and cfg.max_train_epochs == 10
        assert cfg.train_batch_size in (1, 2)
        assert 1e-4 <= cfg.unet_lr <= 3e-4
        assert "penultimate" in preset.reasons["clip_skip"]
        assert advice(cfg) == []  # a preset never sets off the trainer's own "usually a mistake" warnings
    anime, photo = presets["sdxl-anime"].values(), presets["sdxl-photoreal"].values()
    assert (anime["network_dim"], anime["network_alpha"]) == (16, 8)
    assert anime["shuffle_caption"] is True and anime["keep_tokens"] == 1
    assert (photo["network_dim"], photo["network_alpha"], photo["unet_lr"]) == (32, 16, "0.0001")  # unet_lr: text
    assert photo["noise_offset"] == 0.0357 and photo["shuffle_caption"] is False


@pytest.mark.filterwarnings(NOISE_FILTERS[0])
@pytest.mark.filterwarnings(NOISE_FILTERS[1])
def test_the_pages_save_and_load_toml_keep_a_pair(dry_app):
    """Through the served app: Save TOML writes the pair as a TOML list, Load TOML shows it as typed."""
    from gradio_client import Client

    client = Client(dry_app.url, verbose=False)
    text = client.predict(text_encoder_lr="1e-5, 5e-6", config_file="sdxl-pair.toml", api_name="/save_toml")
    assert text.startswith("Saved"), text
    saved = dry_app.settings.configs_dir / "sdxl-pair.toml"
    assert tomllib.loads(saved.read_text(encoding="utf-8"))["optimizer"]["text_encoder_lr"] == [1e-5, 5e-6]
    loaded = client.predict("sdxl-pair.toml", api_name="/load_toml")
    names = [s.name for s in field_specs()]
    assert loaded[-1].startswith("Loaded")
    assert loaded[names.index("text_encoder_lr")] == "1e-05, 5e-06"
    text = client.predict(text_encoder_lr="abc", config_file="bad.toml", api_name="/save_toml")
    assert text.startswith("**Not saved:**") and "text_encoder_lr = 'abc' is invalid" in text and "\n" not in text


def test_each_preset_shows_its_file_size_and_steps_computed_from_its_settings():
    """The size is the one the engine computes for the preset's family and rank (checked against the real models in
    tests/plan/test_estimates.py); the steps are images x repeats / batch x epochs, worked out here."""
    from app.tabs.model import preset_text
    from training.contract.services import lora_size

    for preset in list_presets():
        cfg, text = preset.config(), preset.figures()
        parts = "UNet only" if cfg.network_train_unet_only else "UNet + text encoder"
        assert f"LoRA file ≈ {lora_size(cfg, preset.family).megabytes:.1f} MB (rank {cfg.network_dim}, {parts}" in text
        batch, epochs = preset.settings["train_batch_size"], preset.settings["max_train_epochs"]
        steps = sorted({epochs * math.ceil(n / batch) for n in preset.images_per_epoch})
        assert text.endswith("≈ " + "–".join(f"{s:,}" for s in steps) + " steps."), text
        assert text in preset_text(preset, "")


def test_preset_files_write_no_figure_of_their_own():
    """File sizes and step counts are computed from the settings; a hand-written one in a preset goes stale."""
    for path in sorted(PRESETS_DIR.glob("*.toml")):
        comments = [line.partition("#")[2] for line in path.read_text(encoding="utf-8").splitlines()]
        figures = [c for c in comments if re.search(r"\d\s*MB\b|\d\s*k?\s*steps\b", c)]
        assert figures == [], f"{path.name}: {figures}"


def test_every_topic_names_fields_of_one_section_folded_under_its_advanced():
    """kohya's finer options fold by topic inside their section's Advanced: each name is a field, shown there once."""
    from app.tabs.model import BASIC_FIELDS, TOPICS
    from training.contract.config import field_section

    for topic, names in TOPICS.items():
        assert all(name in TrainConfig.model_fields for name in names), topic
        assert len({field_section(name) for name in names}) == 1, topic
        assert not any(name in basic for basic in BASIC_FIELDS.values() for name in names), topic
