"""app/network_choice.py: the Network section's type and preset derived from the config fields, and a choice written
back into them; every choice makes a config the contract accepts, with the type it was picked as."""

from __future__ import annotations

import pytest

from app.form import default_values, form_problems, values_to_config
from app.network_choice import (
    TYPES,
    choose_preset,
    choose_type,
    module_counts,
    network_problem,
    network_view,
    size_line,
)
from training.contract.network import LYCORIS_PRESETS


def with_choice(values: dict, kind: str) -> dict:
    return values | choose_type(values, kind)


@pytest.mark.parametrize("kind", TYPES)
def test_each_type_makes_a_valid_config_of_that_type(kind):
    values = with_choice(default_values(), kind)
    cfg, error = values_to_config(values)
    assert error is None, error
    assert network_view(values).kind == kind
    expected = {"LoRA": "LoRA", "LoCon": "LoCon", "LoHa": "LoHa", "LoKr": "LoKr", "DoRA": "LoCon+DoRA"}[kind]
    assert cfg.network.kind == expected
    assert form_problems(values) == {}


def test_lora_and_locon_are_kohyas_networks_lora_and_locon_has_a_conv_rank():
    values = default_values() | {"network_dim": 32, "network_alpha": 16}
    assert choose_type(values, "LoRA") == {"network_module": "networks.lora", "network_args": "", "conv_dim": "",
                                           "conv_alpha": ""}
    assert choose_type(values, "LoCon") == {"network_module": "networks.lora", "network_args": "",
                                            "conv_dim": "32", "conv_alpha": "16"}
    cfg, _ = values_to_config(with_choice(values, "LoCon"))
    assert (cfg.conv_dim, cfg.conv_alpha, cfg.network.has_conv) == (32, 16, True)


def test_a_conv_rank_already_set_is_kept_across_types():
    values = default_values() | {"conv_dim": "4", "conv_alpha": "2"}
    assert choose_type(values, "LoCon")["conv_dim"] == "4"
    loha = choose_type(with_choice(values, "LoCon"), "LoHa")
    assert loha == {"network_module": "lycoris.kohya", "network_args": "algo=loha preset=full", "conv_dim": "4",
                    "conv_alpha": "2"}


def test_lycoris_types_write_algo_and_preset_and_dora_its_flag():
    values = default_values()
    assert choose_type(values, "LoKr")["network_args"] == "algo=lokr preset=full"
    assert choose_type(values, "DoRA")["network_args"] == "algo=locon preset=full dora_wd=True"
    assert choose_type(values, "LoHa", "attn-mlp") == {"network_module": "lycoris.kohya",
                                                       "network_args": "algo=loha preset=attn-mlp",
                                                       "conv_dim": "", "conv_alpha": ""}


def test_the_users_own_args_stay_where_they_still_apply():
    values = default_values() | {"network_module": "lycoris.kohya",
                                 "network_args": "algo=lokr preset=attn-mlp factor=8 rank_dropout=0.1 dropout=0.05"}
    assert choose_type(values, "LoHa")["network_args"] == "algo=loha preset=attn-mlp rank_dropout=0.1 dropout=0.05"
    assert choose_type(values, "LoRA")["network_args"] == "rank_dropout=0.1"  # networks.lora takes no dropout arg
    assert choose_preset(values, "full")["network_args"] == "algo=lokr preset=full factor=8 rank_dropout=0.1 " \
                                                            "dropout=0.05"
    broken = default_values() | {"network_args": '"unclosed'}
    assert choose_type(broken, "LoHa")["network_args"] == "algo=loha preset=full"  # started afresh


def test_networks_lora_block_args_stay_with_lora_and_locon_only():
    conv_blocks = "conv_block_dims=" + ",".join(["2"] * 25)
    values = default_values() | {"network_args": f"loraplus_lr_ratio=16 mid_lr_weight=0.5 {conv_blocks}",
                                 "conv_dim": "4"}
    assert choose_type(values, "LoCon")["network_args"] == f"loraplus_lr_ratio=16 mid_lr_weight=0.5 {conv_blocks}"
    assert choose_type(values, "LoRA")["network_args"] == "loraplus_lr_ratio=16 mid_lr_weight=0.5"  # no convs
    assert choose_type(values, "LoHa")["network_args"] == "algo=loha preset=full"  # LyCORIS has none of them


def test_a_preset_keeps_the_algorithm_and_sets_the_conv_fields():
    values = with_choice(default_values(), "DoRA")
    attn = values | choose_preset(values, "attn-only")
    assert attn["network_args"] == "algo=locon preset=attn-only dora_wd=True" and attn["conv_dim"] == ""
    assert network_view(attn).kind == "DoRA" and not network_view(attn).has_conv
    full = attn | choose_preset(attn, "full")
    assert full["conv_dim"] == "16" and network_view(full).has_conv
    assert choose_preset(default_values(), "full") == {}  # networks.lora has kohya's set, no preset


def test_the_view_follows_a_kohya_users_settings():
    base = default_values()
    lokr = network_view(base | {"network_module": "lycoris.kohya", "network_args": "algo=lokr factor=8"})
    assert (lokr.kind, lokr.preset, lokr.has_conv) == ("LoKr", "full", True)
    assert "Kronecker" in lokr.reason and "full" in lokr.reason
    locon = network_view(base | {"network_args": "conv_dim=8 conv_alpha=4"})
    assert (locon.kind, locon.preset, locon.has_conv) == ("LoCon", None, True)
    lycoris_lora = network_view(base | {"network_module": "lycoris.kohya", "network_args": "algo=lora preset=attn-mlp"})
    assert (lycoris_lora.kind, lycoris_lora.preset) == ("LoRA", "attn-mlp")
    assert {network_view(with_choice(base, "LoHa") | choose_preset(with_choice(base, "LoHa"), p)).preset
            for p in LYCORIS_PRESETS} == set(LYCORIS_PRESETS)


def test_a_bad_network_arg_is_the_views_message_and_a_form_problem_at_network_args():
    values = default_values() | {"network_module": "lycoris.kohya", "network_args": "algo=boft"}
    view = network_view(values)
    assert view.kind is None and "algo=boft" in view.reason
    assert "algo=boft is a LyCORIS algorithm not supported here" in network_problem(values)
    assert "algo=boft" in form_problems(values)["network_args"]
    # networks.lora refuses algo: the message shows at the arg typed, not at network_module which it names
    problems = form_problems(default_values() | {"network_args": "algo=loha"})
    assert list(problems) == ["network_args"] and "needs network_module" in problems["network_args"]
    assert network_problem(default_values()) is None


def test_size_line_names_the_type_size_and_modules():
    values = default_values()
    line = size_line(with_choice(values, "LoCon"), "sdxl")
    assert line.startswith("**LoCon file ≈ ") and " MB** · " in line and "SDXL" in line and "modules" in line
    assert "until the base model is set" in size_line(values, None)
    assert size_line(values | {"network_args": "algo=boft"}, "sd1") == ""


def test_module_counts_split_by_kind_once_the_estimate_gives_it():
    class Old:
        modules = 264

    class New(Old):
        linear_modules, conv_modules = 192, 72

    assert module_counts(Old()) == "264 modules"
    assert module_counts(New()) == "264 modules (192 linear, 72 conv)"
