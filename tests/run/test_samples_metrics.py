"""Prompt files in kohya's syntax, loss smoothing and throughput bookkeeping."""

from __future__ import annotations

import math

import pytest

from training.contract.errors import UserError
from training.contract.layout import sample_file_name
from training.contract.prompts import load_prompts
from training.run.metrics import LossEMA, Throughput


def test_kohya_prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# comment\nmychar, smiling --n lowres, bad hands --w 640 --h 512 --d 42 --l 6.5 --s 20\n\n"
                    "mychar, full body\n", encoding="utf-8")
    first, second = load_prompts(str(path), (512, 512))
    assert first.prompt == "mychar, smiling" and first.negative == "lowres, bad hands"
    assert (first.width, first.height, first.seed, first.cfg_scale, first.steps) == (640, 512, 42, 6.5, 20)
    assert second.prompt == "mychar, full body" and (second.width, second.height) == (512, 512)
    assert second.seed != first.seed  # a fixed default seed per prompt: comparable across checkpoints


def test_inline_prompts_split_by_semicolon():
    prompts = load_prompts("a red circle; a blue square --d 7", (64, 64))
    assert [p.prompt for p in prompts] == ["a red circle", "a blue square"] and prompts[1].seed == 7


def test_bad_prompt_option_names_the_prompt():
    with pytest.raises(UserError, match="sample prompt 1: --w 'wide'"):
        load_prompts("a cat --w wide", (512, 512))


def test_missing_prompt_file_is_reported(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_prompts(str(tmp_path / "nope.txt"), (512, 512))


def test_sample_names_follow_kohya():
    assert sample_file_name("mychar", 120, None, 0, 42).startswith("mychar_000120_00_")
    assert sample_file_name("mychar", 120, 3, 1, 42).startswith("mychar_e000003_01_")


def test_bias_corrected_ema_starts_at_the_first_value_and_ignores_nan():
    ema = LossEMA(beta=0.9)
    assert ema.update(0.5) == pytest.approx(0.5)  # no drift toward zero at the start
    ema.update(float("nan"))
    assert ema.count == 1
    for _ in range(200):
        ema.update(0.1)
    assert ema.smoothed == pytest.approx(0.1, abs=1e-6)
    assert math.isnan(LossEMA().smoothed)


def test_throughput_and_eta():
    speed = Throughput()
    for i in range(5):
        speed.record(now=10.0 + i, step=i * 2, images=i * 4)
    assert speed.images_per_second() == pytest.approx(4.0)
    assert speed.seconds_per_step() == pytest.approx(0.5)
    assert speed.eta(100) == pytest.approx(50.0)
