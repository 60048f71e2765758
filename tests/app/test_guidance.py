"""The guidance text must follow the curve's shape (detectors), not an absolute loss number."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from app.guidance import diagnose, fit_trend
from training.contract.presets import parse_band

BAND = (0.08, 0.14)
ROOT = Path(__file__).resolve().parents[2]


def step_events(curve: Callable[[int], float], n: int, noise: float = 0.05, seed: int = 0) -> list[dict]:
    """Step events as the trainer writes them: multiplicative noise, bias-corrected EMA (beta 0.98) as `smoothed`."""
    rng, s, out = random.Random(seed), 0.0, []
    for step in range(1, n + 1):
        loss = curve(step) * (1 + rng.gauss(0, noise))
        s = 0.98 * s + 0.02 * loss
        out.append({"event": "step", "step": step, "loss": round(loss, 6), "smoothed": round(s / (1 - 0.98**step), 6)})
    return out


def val_events(points: list[tuple[int, float]], kind: str = "held-out") -> list[dict]:
    return [{"event": "val", "step": s, "loss": v, "kind": kind} for s, v in points]


def decay(step: int) -> float:
    return 0.1 + 0.15 * math.exp(-step / 300)


def test_decaying_curve_reads_as_learning_or_in_band():
    steps = step_events(decay, 500)
    assert diagnose(steps, [], None, 1000).state == "learning"
    d = diagnose(steps, [], BAND, 1000)
    assert d.state == "in_band"
    assert "rule of thumb" in d.advice and "validation" in d.advice  # guidance only, validation decides


def test_band_above_and_falling_above_flat_and_below():
    early = step_events(lambda s: 0.1 + 0.3 * math.exp(-s / 300), 400)
    assert diagnose(early, [], BAND, 1000).state == "above_band_falling"
    late_flat = step_events(lambda s: 0.3, 800)  # flat but late in the run: no plateau, just above the band
    assert diagnose(late_flat, [], BAND, 1000).state == "above_band"
    low = step_events(lambda s: 0.05 + 0.05 * math.exp(-s / 100), 500)
    d = diagnose(low, [], BAND, 600)
    assert d.state == "below_band" and "rule of thumb" in d.advice


def test_curve_that_flattens_early_is_a_plateau():
    steps = step_events(lambda s: 0.12 + 0.1 * math.exp(-s / 15), 400)
    d = diagnose(steps, [], BAND, 1000)
    assert d.state == "plateau" and "learning rate" in d.advice
    assert diagnose(steps, [], BAND, 500).state != "plateau"  # at 80% of the run flat is expected


def test_validation_that_never_improves_is_a_plateau():
    steps = step_events(lambda s: 0.12, 200, noise=0.5)  # real diffusion noise: the train loss proves nothing
    vals = val_events([(50, 0.110), (100, 0.1095), (150, 0.1101), (200, 0.1098)])
    assert diagnose(steps, vals, None, 1000).state == "plateau"


def test_validation_still_improving_is_not_a_plateau():
    steps = step_events(lambda s: 0.12 + 0.1 * math.exp(-s / 15), 400)
    vals = val_events([(100, 0.13), (200, 0.12), (300, 0.11), (400, 0.10)])
    assert diagnose(steps, vals, None, 1000).state == "learning"


def test_validation_u_curve_is_overfitting_with_best_step_at_the_minimum():
    steps = step_events(decay, 900)
    vals = val_events([(s, 0.1 + 2e-7 * (s - 600) ** 2) for s in range(100, 901, 100)])
    d = diagnose(steps, vals, BAND, 1000)
    assert d.state == "overfitting" and d.best_step == 600
    assert "nearest step 600" in d.advice


def test_one_validation_point_above_the_minimum_is_not_overfitting():
    steps = step_events(decay, 700)
    vals = val_events([(s, 0.1 + 2e-7 * (s - 600) ** 2) for s in range(100, 701, 100)])
    d = diagnose(steps, vals, None, 1000)
    assert d.state == "learning" and d.best_step == 600


def test_train_subset_overfitting_says_it_is_weaker_evidence():
    vals = val_events([(100, 0.12), (200, 0.10), (300, 0.11), (400, 0.12)], kind="train-subset")
    d = diagnose(step_events(decay, 400), vals, None, 1000)
    assert d.state == "overfitting" and "train-subset" in d.advice


def test_rising_curve_is_diverging():
    d = diagnose(step_events(lambda s: 0.1 * math.exp(s / 100), 200), [], BAND, 1000)
    assert d.state == "diverging" and "learning rate" in d.advice


def test_early_sharp_validation_rise_is_diverging():
    vals = val_events([(50, 0.10), (100, 0.09), (150, 0.12)])
    d = diagnose(step_events(lambda s: 0.12, 150), vals, None, 600)  # a quarter of the run: early, not too early
    assert d.state == "diverging" and d.best_step == 100


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_loss_in_steps_is_nan_even_with_few_points(bad):
    steps = step_events(decay, 5)
    steps[3]["loss"] = bad
    d = diagnose(steps, [], BAND, 1000)
    assert d.state == "nan" and "step 4" in d.headline
    assert "bf16" in d.advice and "Halve the learning rate" in d.advice


def test_error_event_is_nan_and_names_the_last_good_save():
    error = {"event": "error", "code": "non_finite_loss", "step": 57, "msg": "loss became NaN/Inf at step 57",
             "last_checkpoint": "out/run-000050.safetensors"}
    d = diagnose(step_events(decay, 56), [], None, 1000, error)
    assert d.state == "nan" and "57" in d.headline and "run-000050.safetensors" in d.advice


@pytest.mark.parametrize("n", [0, 5, 500])
def test_other_errors_are_a_failure_whatever_the_curve(n):
    error = {"event": "error", "msg": "CUDA out of memory. Tried to allocate 2 GiB\n(more lines)"}
    d = diagnose(step_events(decay, n), [], BAND, 1000, error)
    assert d.state == "failed" and d.headline == "The run failed: CUDA out of memory. Tried to allocate 2 GiB"
    assert "Waiting" not in d.headline + d.advice and "Too early" not in d.headline


def test_too_few_points_is_waiting():
    assert diagnose([], [], BAND, None).state == "waiting"
    assert diagnose(step_events(decay, 9), [], BAND, 1000).state == "waiting"


def test_unknown_total_steps_still_reads_the_curve():
    assert diagnose(step_events(decay, 500), [], BAND, None).state == "in_band"


def test_fit_trend_sees_through_noise():
    xs = list(range(200))
    trend = fit_trend(xs, [1.0 + 0.001 * x for x in xs])
    assert trend is not None and trend.rel_change == pytest.approx(0.199 / 1.0995, rel=1e-3) and trend.t > 100
    assert fit_trend([1, 2], [1.0, 2.0]) is None


def test_parse_band():
    assert parse_band([0.08, 0.14]) == (0.08, 0.14)
    for bad in (None, [0.14, 0.08], [0.1], ["a", "b"], [float("nan"), 0.1]):
        assert parse_band(bad) is None


def test_app_modules_do_not_import_heavy_packages():
    """The UI process must start fast: no torch, diffusers, peft or gradio behind the chart and guidance."""
    probe = ("import sys, app.guidance, app.plots; "
             "print(sorted({'torch', 'diffusers', 'peft', 'gradio', 'matplotlib.pyplot'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
