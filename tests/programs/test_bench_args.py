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
