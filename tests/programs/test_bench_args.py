"""What ``python -m training.bench --help`` promises about its arguments."""

from __future__ import annotations

import typing

import pytest

from training.bench import bench_config, parse_args
from training.contract.config import TrainConfig


def test_every_optimizer_the_config_takes_is_offered_and_others_are_refused_as_bad_arguments(capsys):
    offered = typing.get_args(TrainConfig.model_fields["optimizer_type"].annotation)
    for name in offered:
        assert bench_config(parse_args(["--optimizer", name])).optimizer_type == name
    with pytest.raises(SystemExit) as err:
        parse_args(["--optimizer", "SGD"])
    assert err.value.code == 2 and "--optimizer" in capsys.readouterr().err


def test_defaults_are_the_ones_the_help_names():
    args = parse_args([])
    cfg = bench_config(args)
    assert (args.family, args.batch, args.steps, args.warmup, args.resolution) == ("sd1", 1, 50, 10, 512)
    assert (cfg.network_dim, cfg.network_alpha, cfg.mixed_precision, cfg.optimizer_type) == (16, 8.0, "bf16", "AdamW")
    assert parse_args(["--family", "sdxl"]).resolution == 1024


def test_each_network_type_is_offered_and_builds_its_config():
    from training.bench import NETWORKS

    kinds = {name: bench_config(parse_args(["--network", name, "--rank", "8"])).network for name in NETWORKS}
    assert {name: spec.kind for name, spec in kinds.items()} == {
        "attn-lora": "LoRA", "lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "dora": "LoCon+DoRA"}
    assert kinds["attn-lora"].preset == "attn-only" and kinds["lora"].preset == "kohya"
    assert (kinds["locon"].conv_dim, kinds["locon"].conv_alpha) == (8, 4.0)
    assert parse_args([]).network == "lora"


def test_networks_compare_against_attention_only_lora_first(capsys):
    from training.bench import NETWORKS, child_args

    assert parse_args(["--networks", "all"]).networks == list(NETWORKS)
    assert parse_args(["--networks", "loha,lokr"]).networks == ["attn-lora", "loha", "lokr"]
    with pytest.raises(SystemExit) as err:
        parse_args(["--networks", "loha,ia3"])
    assert err.value.code == 2 and "--networks" in capsys.readouterr().err
    assert child_args(["--networks", "all", "--steps", "2"], "loha") == ["--steps", "2", "--network", "loha"]


def test_the_comparison_table_is_relative_to_the_first_network():
    from training.bench import comparison_table

    row = {"kind": "LoRA", "lora_layers": 128, "adapter_params": 1000, "file_mb": 6.4, "peak_rss_gib": 3.0,
           "peak_mem_gib_run": None}
    table = comparison_table([row | {"network": "attn-lora", "s_per_step": 2.0},
                              row | {"network": "loha", "s_per_step": 5.0, "kind": "LoHa"}])
    assert "| attn-lora | LoRA | 128 | 1,000 | 6.4 | 2.000 | 1.00x |" in table
    assert "| loha | LoHa | 128 | 1,000 | 6.4 | 5.000 | 2.50x |" in table
