"""app/form.py without a browser: each field's check, the saved form, what a CPU-only machine uses instead, and the
Model tab's layout covering every field once."""

from __future__ import annotations

import json

from app.form import (
    FORM_FILE,
    config_to_values,
    cpu_fallback_note,
    default_values,
    field_specs,
    first_problem,
    form_problems,
    load_form,
    loaded_values,
    parse_number,
    save_form,
    values_to_config,
)
from app.model_check import model_problem
from training.contract.config import TrainConfig
from training.contract.layout import JOB_FILE

SPECS = {s.name: s for s in field_specs()}
CPU = "No CUDA GPU found: training would run on the CPU (very slow; fine for the demo) · torch 2.5"
GPU = "GPU: NVIDIA RTX 4090, 24 GB · torch 2.5 · CUDA 12.4"


def test_the_defaults_have_no_problem():
    assert form_problems(default_values()) == {}


def test_numbers_say_the_allowed_range_and_what_was_given():
    assert parse_number(SPECS["learning_rate"], -1) == (None, "learning_rate must be > 0 and ≤ 10; you gave -1")
    assert parse_number(SPECS["learning_rate"], None)[1] == "learning_rate is empty: give a number > 0 and ≤ 10"
    assert parse_number(SPECS["unet_lr"], " abc ")[1] == "unet_lr: 'abc' is not a number; give a number > 0 and ≤ 10"
    assert parse_number(SPECS["unet_lr"], "nan")[1].startswith("unet_lr: 'nan' is not a number")
    assert parse_number(SPECS["max_train_epochs"], "1.5")[1] == "max_train_epochs must be a whole number; you gave 1.5"
    assert parse_number(SPECS["network_dropout"], 1)[1] == "network_dropout must be ≥ 0 and < 1; you gave 1"
    assert parse_number(SPECS["network_dim"], 1024) == (1024, None)
    assert parse_number(SPECS["unet_lr"], "") == (None, None)  # empty optional: unset
    assert parse_number(SPECS["max_train_epochs"], "12") == (12, None)


def test_every_invalid_field_is_named_once_in_form_order():
    values = default_values() | {"network_dim": 0, "unet_lr": "abc", "optimizer_type": "SGD", "resolution": "500"}
    problems = form_problems(values)
    assert list(problems) == ["resolution", "network_dim", "optimizer_type", "unet_lr"]
    assert all("\n" not in line for line in problems.values())
    assert first_problem(values) == problems["resolution"]
    cfg, error = values_to_config(default_values() | {"learning_rate": -1})
    assert cfg is None and error == "learning_rate must be > 0 and ≤ 10; you gave -1"


def test_a_whole_config_rule_is_shown_at_the_field_it_names():
    problems = form_problems(default_values() | {"min_bucket_reso": 2048, "max_bucket_reso": 1024})
    assert list(problems) == ["min_bucket_reso"] and "must not exceed max_bucket_reso" in problems["min_bucket_reso"]


def test_optional_numbers_are_text_that_stays_unset_when_empty():
    for name in ("unet_lr", "max_train_epochs", "min_snr_gamma", "save_every_n_epochs"):
        assert SPECS[name].free_number and default_values()[name] == ""
    assert not SPECS["learning_rate"].free_number and SPECS["learning_rate"].step == 1e-5
    assert SPECS["network_dim"].step == 1
    cfg, error = values_to_config(default_values() | {"unet_lr": " 2e-4 ", "max_train_epochs": "10"})
    assert error is None and (cfg.unet_lr, cfg.max_train_epochs, cfg.min_snr_gamma) == (2e-4, 10, None)


def test_an_unreadable_model_file_is_a_problem_a_missing_one_is_the_preflights(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x01")
    assert "broken.safetensors" in model_problem(str(broken))
    assert "broken.safetensors" in form_problems(default_values() | {
        "pretrained_model_name_or_path": str(broken)})["pretrained_model_name_or_path"]
    assert model_problem(str(tmp_path / "missing.safetensors")) is None
    assert model_problem("stabilityai/stable-diffusion-xl-base-1.0") is None
    assert model_problem("") is None


def test_the_saved_form_comes_back_and_a_damaged_one_is_an_empty_form(tmp_path):
    values = default_values() | {"network_dim": 48, "unet_lr": "2e-4", "optimizer_type": "Lion"}
    save_form(tmp_path, values, "sd15-anime", {"key": "sd15-anime", "name": "SD1.5 anime"})
    back, preset, record = load_form(tmp_path)
    assert back == values and preset == "sd15-anime" and record["name"] == "SD1.5 anime"

    state = json.loads((tmp_path / FORM_FILE).read_text(encoding="utf-8"))
    state["values"] |= {"network_dim": "many", "optimizer_type": "SGD", "no_such_field": 1, "shuffle_caption": 3}
    (tmp_path / FORM_FILE).write_text(json.dumps(state), encoding="utf-8")
    back, _, _ = load_form(tmp_path)
    assert "network_dim" not in back and "optimizer_type" not in back and "shuffle_caption" not in back
    assert "no_such_field" not in back and back["unet_lr"] == "2e-4"

    (tmp_path / FORM_FILE).write_text("{broken", encoding="utf-8")
    assert load_form(tmp_path) == ({}, None, None)
    assert load_form(tmp_path / "nowhere") == ({}, None, None)


def test_a_runs_job_toml_leaves_output_dir_empty_a_users_folder_stays(tmp_path):
    run = tmp_path / "runs" / "x" / "20260101-000000"
    run.mkdir(parents=True)
    (run / JOB_FILE).write_text("", encoding="utf-8")
    assert loaded_values(TrainConfig(output_dir=str(run)))["output_dir"] == ""
    assert loaded_values(TrainConfig(output_dir=str(tmp_path / "mine")))["output_dir"] == str(tmp_path / "mine")


def test_a_cpu_only_machine_is_told_what_the_trainer_uses_instead():
    note = cpu_fallback_note("AdamW8bit", "bf16", CPU, has_bitsandbytes=True)
    assert note.startswith("**No CUDA GPU here:**")
    assert "mixed_precision bf16 needs a CUDA GPU, so the trainer trains in float32 instead" in note
    assert "AdamW8bit is used as chosen: the installed bitsandbytes runs it on the CPU" in note
    assert "not installed" in cpu_fallback_note("AdamW8bit", "no", CPU, has_bitsandbytes=False)
    assert cpu_fallback_note("AdamW", "no", CPU, has_bitsandbytes=True) == ""
    assert "fp16" in cpu_fallback_note("AdamW", "fp16", "No CUDA GPU; an Apple GPU (MPS) is available", True)
    assert cpu_fallback_note("AdamW8bit", "bf16", GPU, has_bitsandbytes=True) == ""
    assert cpu_fallback_note("AdamW8bit", "bf16", "Checking for a GPU…", has_bitsandbytes=True) == ""


def test_the_model_tab_lays_out_every_field_once():
    from types import SimpleNamespace

    from app.tabs.model import BASIC_FIELDS, OTHER_TABS, layout

    ctx = SimpleNamespace(specs=field_specs())
    sections = layout(ctx)
    placed = [name for basic, advanced in sections.values() for name in basic + advanced]
    assert sorted(placed) == sorted(set(TrainConfig.model_fields) - set(OTHER_TABS))
    assert len(placed) == len(set(placed))
    for section, names in BASIC_FIELDS.items():
        assert sections[section][0] == list(names)
        assert len(names) <= 6  # each section short enough to scan
    assert "output_name" in sections["model"][0]


def test_network_args_round_trip_through_the_form_text():
    cfg = TrainConfig(network_module="lycoris.kohya", network_args=["algo=lokr", "preset=attn-mlp", "factor=4"])
    values = config_to_values(cfg)
    assert values["network_args"] == "algo=lokr preset=attn-mlp factor=4"
    back, error = values_to_config(values)
    assert error is None and back.network == cfg.network


def test_a_bad_network_arg_is_named_beside_its_field():
    values = default_values() | {"network_module": "lycoris.kohya", "network_args": "algo=boft"}
    assert "algo=boft" in form_problems(values)["network_args"]
