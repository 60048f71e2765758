"""The config contract: kohya key names, sections flattened, typos and bad values refused with one clear line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from training.contract.config import TrainConfig
from training.contract.config_io import ConfigError, config_from_dict, config_to_toml, load_config
from training.plan.preflight import preflight


def write(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_kohya_style_sections_are_flattened(tmp_path):
    cfg, notes = load_config(write(tmp_path, """
        [model_arguments]
        pretrained_model_name_or_path = "model.safetensors"
        v2 = false
        [dataset_arguments]
        resolution = "768,512"
        shuffle_caption = true
        keep_tokens = 1
        [training_arguments]
        xformers = true
        network_dim = 32
    """))
    assert cfg.resolution_wh == (768, 512)
    assert cfg.network_dim == 32 and cfg.keep_tokens == 1 and cfg.v2 is False
    assert any("xformers" in n for n in notes)


def test_unknown_key_suggests_the_right_one(tmp_path):
    expected = "run.toml: unknown key 'network_dims' (did you mean 'network_dim'?)"
    assert error_of(tmp_path, "network_dims = 8") == expected


def test_invalid_value_names_key_value_and_range(tmp_path):
    message = error_of(tmp_path, "[network]\nnetwork_dim = 0")
    assert "network_dim = 0" in message and "(allowed: 1 <= x <= 1024)" in message


def test_bad_choice_lists_the_choices(tmp_path):
    message = error_of(tmp_path, 'optimizer_type = "Adam"')
    assert "optimizer_type = 'Adam'" in message and "AdamW8bit" in message


@pytest.mark.parametrize("text, fragment", [
    ('resolution = "512x512"', "resolution"),
    ("min_bucket_reso = 1024\nmax_bucket_reso = 512", "min_bucket_reso"),
    ("network_dim = 8\n[network]\nnetwork_dim = 16", "set twice"),
    ("in_json = \"meta.json\"", "does not support"),
    ('network_module = "lycoris.kohya"\nnetwork_args = ["algo=boft"]', "algo=boft"),
    ("schema_version = 99", "newer"),
    ('output_name = "../x"', "output_name"),
    ("learning_rate = -1", "learning_rate"),
    ("this is not toml", "not valid TOML"),
])
def test_refused_before_anything_loads(tmp_path, text, fragment):
    assert fragment in error_of(tmp_path, text)


def test_saved_toml_round_trips_by_section(tmp_path):
    cfg = TrainConfig(pretrained_model_name_or_path="m", train_data_dir="d", output_dir="o", network_dim=8,
                      unet_lr=3e-4, resolution="640,512", min_snr_gamma=5)
    text = config_to_toml(cfg, preset="sd15-anime")
    assert "[network]" in text and "network_dim = 8" in text and 'preset = "sd15-anime"' in text
    assert "text_encoder_lr" not in text  # unset optionals are omitted
    loaded, _ = load_config(write(tmp_path, text))
    assert loaded == cfg


def test_every_field_documents_why():
    for name, field in TrainConfig.model_fields.items():
        assert field.description and len(field.description) > 15, name


def test_preflight_names_the_missing_folder(tmp_path):
    cfg = TrainConfig(pretrained_model_name_or_path=str(tmp_path), train_data_dir=str(tmp_path / "nope"),
                      output_dir=str(tmp_path / "out"))
    with pytest.raises(Exception, match="nope"):
        preflight(cfg)


def test_preflight_refuses_a_missing_model_file(tmp_path):
    cfg = TrainConfig(pretrained_model_name_or_path=str(tmp_path / "m.safetensors"), train_data_dir=str(tmp_path),
                      output_dir=str(tmp_path / "out"))
    with pytest.raises(Exception, match=r"m\.safetensors does not exist"):
        preflight(cfg)


def test_options_doc_is_current():
    from pathlib import Path

    from training.options_doc import options_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "options.md"
    assert doc.read_text(encoding="utf-8") == options_markdown(), "python -m training.options_doc > docs/options.md"


def test_presets_layer_under_a_run_file(tmp_path):
    root = Path(__file__).resolve().parents[2]
    for preset in sorted((root / "presets").glob("*.toml")):
        cfg, _ = load_config([preset, root / "assets" / "example-run.toml"], {"network_dim": 24})
        assert cfg.output_name == "mychar" and cfg.network_dim == 24
        assert cfg.unet_lr is not None and cfg.max_train_epochs == 10
    anime, _ = load_config([root / "presets" / "sd15-anime.toml"])
    assert anime.clip_skip == 2 and anime.shuffle_caption and anime.keep_tokens == 1


def test_advice_flags_likely_mistakes_without_refusing():
    from training.plan.preflight import advice

    assert advice(TrainConfig()) == []
    codes = [c for c, _ in advice(TrainConfig(optimizer_type="Prodigy", network_dim=8, network_alpha=16,
                                              network_train_unet_only=True, text_encoder_lr=1e-5))]
    assert codes == ["prodigy_lr", "alpha_above_rank", "text_encoder_lr_unused"]


def test_windows_backslash_path_gets_a_hint(tmp_path):
    message = error_of(tmp_path, 'train_data_dir = "C:\\datasets\\mychar"')
    assert "single quotes" in message


@pytest.mark.parametrize(("value", "parsed", "rates"), [
    ("1e-5", 1e-5, (1e-5, 1e-5)),
    ("1e-5, 5e-6", [1e-5, 5e-6], (1e-5, 5e-6)),
    ([2e-5], 2e-5, (2e-5, 2e-5)),
    ([1e-5, 0.0], [1e-5, 0.0], (1e-5, 0.0)),
    (None, None, (1e-4, 1e-4)),
])
def test_text_encoder_lr_is_one_rate_or_sdxls_pair(value, parsed, rates):
    cfg = TrainConfig(text_encoder_lr=value, learning_rate=1e-4)
    assert cfg.text_encoder_lr == parsed and cfg.text_encoder_lrs == rates


def test_each_text_encoder_trains_only_at_a_rate_above_zero():
    assert TrainConfig(text_encoder_lr=[1e-5, 0]).trained_text_encoders(2) == [0]
    assert TrainConfig(text_encoder_lr=[0, 1e-5]).trained_text_encoders(1) == []  # SD1 has no second encoder
    assert TrainConfig(text_encoder_lr=1e-5, network_train_unet_only=True).trained_text_encoders(2) == []
    assert TrainConfig(text_encoder_lr="1e-5, 5e-6").trained_text_encoders(2) == [0, 1]


def test_text_encoder_lr_pair_round_trips_through_toml_and_bad_values_name_the_key(tmp_path):
    cfg, _ = load_config(write(tmp_path, "text_encoder_lr = [1e-5, 5e-6]\n"))
    again, _ = load_config(write(tmp_path, config_to_toml(cfg)))
    assert again.text_encoder_lr == [1e-5, 5e-6]
    assert error_of(tmp_path, "text_encoder_lr = [1e-5, 5e-6, 1e-6]").startswith(
        "run.toml: text_encoder_lr = [1e-05, 5e-06, 1e-06] is invalid: give one value, or two for SDXL")
    assert "text_encoder_lr = 'fast' is invalid: must be a number, or two numbers" in error_of(
        tmp_path, 'text_encoder_lr = "fast"')
    assert "each value must be between 0 and 10" in error_of(tmp_path, "text_encoder_lr = -1.0")


# --- the allowed range, as the options doc, an error message and the form's tooltip word it ---------------------
RANGE = re.compile(r"^(?:(?P<lo>-?[\d.e+-]+) (?P<lo_op><=|<) x(?: (?P<hi_op><=|<) (?P<hi>-?[\d.e+-]+))?"
                   r"|(?P<one_op>>=|>|<=|<) (?P<one>-?[\d.e+-]+))$")
PROBE_BASE = {"min_bucket_reso": 64, "max_bucket_reso": 8192}  # so the bucket pair never refuses a probe itself


def admitted_by_text(text: str, value: float) -> bool:
    """Whether the worded range (``1 <= x <= 1024``, ``> 0``, ``0 <= x < 1``) admits ``value``."""
    m = RANGE.match(text)
    assert m, f"not a range: {text!r}"
    ops = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, ">": lambda a, b: a > b}
    if m["one_op"]:
        return ops[m["one_op"]](value, float(m["one"]))
    below = ops[m["hi_op"]](value, float(m["hi"])) if m["hi_op"] else True
    return ops[m["lo_op"]](float(m["lo"]), value) and below


def types_of(name: str) -> set:
    annotation = TrainConfig.model_fields[name].annotation
    return {annotation, *getattr(annotation, "__args__", ())}


def numeric_fields() -> list[str]:
    """Fields of a plain number type that declare limits."""
    return [name for name, info in TrainConfig.model_fields.items() if {int, float} & types_of(name) and info.metadata]


def probes(name: str, text: str) -> list[float]:
    """Each bound, from the field's declared limits and from the words, with a value just either side of it."""
    step = 1 if int in types_of(name) else 1e-6
    declared = [getattr(m, a) for m in TrainConfig.model_fields[name].metadata for a in ("ge", "gt", "le", "lt")
                if getattr(m, a, None) is not None]
    worded = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", text)]
    return sorted({b + d for b in declared + worded for d in (-step, 0, step)})


def accepted(name: str, value: float) -> bool:
    try:
        TrainConfig.model_validate(PROBE_BASE | {name: value})
    except ValidationError:
        return False
    return True


def worded_ranges(name: str) -> dict[str, str]:
    """The range as each place words it: the options doc's row, the form's tooltip, the message refusing a value."""
    from app.form import field_specs
    from training.options_doc import options_markdown

    row = next(line for line in options_markdown().splitlines() if line.startswith(f"| `{name}` |"))
    tooltip = next(s.info for s in field_specs() if s.name == name)
    outside = next(v for v in (-1e9, 1e9) if not accepted(name, v))
    with pytest.raises(ConfigError) as err:
        config_from_dict(PROBE_BASE | {name: outside})
    return {"doc": row.split(" | ")[2],
            "form": re.search(r"\(allowed: (.+)\)$", tooltip)[1],
            "message": re.search(r"\(allowed: (.+)\)$", str(err.value))[1]}


@pytest.mark.parametrize("name", numeric_fields())
def test_the_worded_range_admits_exactly_what_the_config_accepts(name):
    for where, text in worded_ranges(name).items():
        for value in probes(name, text):
            assert admitted_by_text(text, value) == accepted(name, value), f"{where} says {text!r}; {name} = {value}"


def test_exclusive_bounds_are_worded_as_exclusive():
    assert worded_ranges("network_alpha")["doc"] == "> 0"
    assert worded_ranges("network_dropout")["message"] == "0 <= x < 1"
    assert worded_ranges("learning_rate")["form"] == "0 < x <= 10"
