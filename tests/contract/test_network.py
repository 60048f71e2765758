"""kohya's network_module/network_args as users write them resolve to the network they train elsewhere, and every
mistake is one line naming the arg and what is accepted."""

import pytest
from pydantic import ValidationError

from training.contract.config import TrainConfig
from training.contract.config_io import config_from_dict
from training.contract.network import KOHYA_LORA, LYCORIS, NetworkArgsError, parse_network, split_args


def test_default_is_kohya_lora_without_conv():
    spec = TrainConfig().network
    assert (spec.module, spec.algo, spec.preset, spec.conv_dim, spec.kind) == (KOHYA_LORA, "lora", "kohya", 0, "LoRA")
    assert not spec.has_conv
    assert spec.args() == []


def test_kohya_locon_from_args_or_flat_keys():
    from_args = TrainConfig(network_args=["conv_dim=8", "conv_alpha=4"]).network
    flat = TrainConfig(conv_dim=8, conv_alpha=4).network
    assert from_args == flat
    assert (flat.kind, flat.conv_dim, flat.conv_alpha, flat.has_conv) == ("LoCon", 8, 4.0, True)
    assert flat.args() == ["conv_dim=8", "conv_alpha=4"]


def test_kohya_conv_alpha_defaults_to_network_alpha():
    assert TrainConfig(network_alpha=6, conv_dim=8).network.conv_alpha == 6


def test_lycoris_defaults_are_lycoris_own():
    """LyCORIS's kohya wrapper: algo=lora (LoCon), preset=full, conv rank/alpha = the linear ones."""
    spec = TrainConfig(network_module=LYCORIS, network_dim=16, network_alpha=8).network
    assert (spec.algo, spec.preset, spec.conv_dim, spec.conv_alpha, spec.kind) == ("lora", "full", 16, 8.0, "LoCon")
    assert spec.wd_on_output and not spec.dora_wd and spec.factor == -1


@pytest.mark.parametrize(("args", "kind"), [
    (["algo=locon"], "LoCon"), (["algo=loha"], "LoHa"), (["algo=lokr", "factor=8"], "LoKr"),
    (["algo=locon", "dora_wd=True"], "LoCon+DoRA"), (["algo=lora", "preset=attn-only"], "LoRA"),
])
def test_lycoris_kinds(args, kind):
    assert TrainConfig(network_module=LYCORIS, network_args=args).network.kind == kind


def test_args_as_one_line_of_text_as_the_form_and_set_send_them():
    cfg = TrainConfig(network_module=LYCORIS, network_args='algo=lokr factor=4 "preset=attn-mlp"')
    assert cfg.network_args == ["algo=lokr", "factor=4", "preset=attn-mlp"]
    assert (cfg.network.algo, cfg.network.factor, cfg.network.preset) == ("lokr", 4, "attn-mlp")


def test_canonical_args_round_trip():
    spec = TrainConfig(network_module=LYCORIS, network_args=["algo=lokr", "factor=4", "use_tucker=True",
                                                             "rank_dropout=0.1"]).network
    again = parse_network(LYCORIS, spec.args(), 16, 8)
    assert again == spec


def test_a_kohya_toml_file_with_network_args_loads():
    cfg, notes = config_from_dict({"network": {"network_module": "lycoris.kohya", "network_dim": 8, "network_alpha": 4,
                                        "network_args": ["algo=loha", "preset=attn-mlp"]}}, "run.toml")
    assert cfg.network.kind == "LoHa" and cfg.network.preset == "attn-mlp"
    assert notes == []


def test_config_notes_carry_the_network_warnings():
    _, notes = config_from_dict({"network_module": "lycoris.kohya", "network_args": ["preset=attn-only"],
                                 "conv_dim": 8}, "run.toml")
    assert any("conv_dim=8 has no effect" in note for note in notes)


@pytest.mark.parametrize(("module", "args", "says"), [
    (LYCORIS, ["algo=boft"], "algo=boft is a LyCORIS algorithm not supported here; use one of locon, loha, lokr"),
    (LYCORIS, ["algo=nonsense"], "algo=nonsense is unknown"),
    (LYCORIS, ["preset=my.toml"], "preset=my.toml: use one of attn-only"),
    (LYCORIS, ["algo=loha", "dora_wd=True"], "dora_wd=True works with algo=locon"),
    (LYCORIS, ["conv_dim=eight"], "conv_dim=eight: must be an integer"),
    (LYCORIS, ["frobnicate=1"], "'frobnicate' is unknown to lycoris.kohya; it accepts algo, preset"),
    (LYCORIS, ["block_dims=2,4,4"], "'block_dims' works with network_module = \"networks.lora\" only"),
    (LYCORIS, ["use_scalar=True"], "'use_scalar' (LyCORIS's trainable scalar) is not supported yet"),
    (KOHYA_LORA, ["block_dims=2,4,4"], "block_dims has 3 values; it takes one per UNet block: 25 for SD1/SD2, 23 "
                                       "for SDXL"),
    (KOHYA_LORA, [f"block_dims={','.join(['4'] * 25)}", f"block_alphas={','.join(['2'] * 23)}"],
     "block_dims, block_alphas must have the same number of values"),
    (KOHYA_LORA, ["block_dims=" + ",".join(["4"] * 24 + ["x"])], "block_dims=x: must be an integer"),
    (KOHYA_LORA, ["down_lr_weight=cosin"], "down_lr_weight=cosin: write one weight per block separated by commas, "
                                           "or one of cosine, sine, linear, reverse_linear, zeros"),
    (KOHYA_LORA, ["up_lr_weight=0.5"], "up_lr_weight=0.5: write one weight per block"),
    (KOHYA_LORA, ["mid_lr_weight=-1"], "mid_lr_weight=-1: must be >= 0"),
    (KOHYA_LORA, ["loraplus_lr_ratio=big"], "loraplus_lr_ratio=big: must be a number"),
    (KOHYA_LORA, ["dim_from_weights=True"], "write dim_from_weights = true as its own setting"),
    (LYCORIS, ["algo=loha", "algo=lokr"], "'algo' is given twice"),
    (LYCORIS, ["conv_dim"], "'conv_dim': write key=value"),
    (LYCORIS, ["rank_dropout=2"], "rank_dropout=2: must be between 0 and 1"),
    (KOHYA_LORA, ["algo=loha"], "'algo' needs network_module = \"lycoris.kohya\""),
    ("networks.dylora", [], "network_module 'networks.dylora' is not supported"),
])
def test_bad_network_settings_are_one_line_naming_the_arg(module, args, says):
    with pytest.raises(NetworkArgsError) as info:
        parse_network(module, args, 16, 8)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_config_refuses_a_bad_arg_naming_it():
    with pytest.raises(ValidationError, match="algo=boft"):
        TrainConfig(network_module=LYCORIS, network_args=["algo=boft"])


def test_flat_conv_dim_contradicting_network_args_is_refused():
    with pytest.raises(ValidationError, match="conv_dim is 8 but network_args says conv_dim=4"):
        TrainConfig(conv_dim=8, network_args=["conv_dim=4"])


def test_conv_dim_without_convs_in_the_preset_is_a_note_not_an_error():
    spec = TrainConfig(network_module=LYCORIS, network_args=["preset=attn-only", "conv_dim=8"]).network
    assert not spec.has_conv
    assert any("conv_dim=8 has no effect: preset=attn-only" in note for note in spec.notes)
    assert TrainConfig(network_module=LYCORIS, network_args=["preset=attn-only"]).network.notes == ()


def test_split_args_keeps_commas_inside_a_value():
    assert split_args("block_dims=2,4,4 conv_dim=4") == ["block_dims=2,4,4", "conv_dim=4"]
    assert split_args("algo=loha, preset=full") == ["algo=loha", "preset=full"]
    assert split_args(None) == []


def test_networks_lora_block_args_parse_and_round_trip():
    dims = ",".join(str(1 + i % 4) for i in range(25))
    spec = TrainConfig(network_args=[f"block_dims={dims}", "conv_block_dims=" + ",".join(["2"] * 25),
                                     "down_lr_weight=cosine+0.5", "mid_lr_weight=0.5", "up_lr_weight=1,,0.5",
                                     "block_lr_zero_threshold=0.1", "loraplus_unet_lr_ratio=16"]).network
    assert spec.block_dims == tuple(1 + i % 4 for i in range(25)) and spec.conv_block_dims == (2,) * 25
    assert (spec.down_lr_weight, spec.mid_lr_weight, spec.up_lr_weight) == ("cosine+0.5", "0.5", "1,,0.5")
    assert (spec.per_block, spec.has_conv, spec.kind) == (True, True, "LoCon")  # conv_block_dims: 3x3 convs train
    assert (spec.loraplus_ratio(unet=True), spec.loraplus_ratio(unet=False)) == (16, None)
    assert parse_network(KOHYA_LORA, spec.args(), 16, 8) == spec


def test_block_args_without_block_dims_or_rates_are_noted_as_doing_nothing():
    _, notes = config_from_dict({"network_args": ["block_alphas=" + ",".join(["2"] * 23)]}, "run.toml")
    assert any("no effect without block_dims" in note for note in notes)
    assert not TrainConfig(network_args=["conv_block_dims=" + ",".join(["2"] * 25)]).network.has_conv
