"""Plain-language reading of a run's loss curve for the UI, driven by detectors rather than absolute numbers.

Inputs are the event dicts of events.jsonl as they arrive (``step`` and ``val`` events, the ``error`` event if any).
Why detectors: the absolute loss level depends on the base model, min-SNR, noise offset, prediction type and data,
and each step's random timestep makes it jump, so only the shape of the curve and the validation minimum say
something reliable.
Thresholds are first guesses on synthetic curves; calibrate them on real runs. Pure Python: no numpy, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

RECENT_FRAC, RECENT_MIN = 0.2, 10  # divergence looks at the last 20% of points: recent enough to react
# No reading before the curve can support one: the recent-trend fit needs RECENT_MIN points and as many before
# them to stand against, and the first fifth of a run (warm-up, the first fast fall) says little about the rest.
MIN_POINTS, MIN_PROGRESS = 2 * RECENT_MIN, 0.2
DIVERGE_REL, DIVERGE_T = 0.10, 4.0  # a rise of >10% over the window, 4 standard errors from flat (polled often)
PLATEAU_FRAC, PLATEAU_MIN = 0.4, 30  # a plateau must be long: the last 40% of points, at least 30 of them
PLATEAU_REL, PLATEAU_BOUND = 0.03, 0.06  # fitted change <3%, and confidently <6% (noise can hide a slow fall)
PLATEAU_BEFORE = 0.6  # late in a run flat is expected (LR decays), so plateau is only flagged before 60%
VAL_FLAT = 0.02  # last three validation points within 2%: validation has stopped moving too
VAL_LEARNED = 0.05  # validation never >5% below its first value: nothing learned yet (vs. resting at its minimum)
OVERFIT_MARGIN, OVERFIT_POINTS = 0.02, 2  # 2 consecutive checks >2% above the minimum: a real rise, not jitter
VAL_SHARP, VAL_EARLY = 0.15, 0.4  # validation >15% above its minimum before 40% of the run: LR too high
FALLING_T = -2.0  # slope at least 2 standard errors below zero counts as "still falling"


@dataclass
class Diagnosis:
    state: str  # waiting | failed | nan | diverging | overfitting | plateau | in_band | above_band_falling | above_band
    #             | below_band | learning
    headline: str
    advice: str
    best_step: int | None = None  # step of the lowest validation loss so far: the save to pick


@dataclass
class Trend:
    rel_change: float  # fitted change over the window, relative to the window's mean level
    rel_se: float  # standard error of rel_change
    t: float  # slope / its standard error: how clearly the trend differs from flat


def to_float(value: Any) -> float:
    """Event values may be numbers, None, or the strings "nan"/"inf" that events.py writes for non-finite floats."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def finite_series(events: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the events whose value under key is finite: what detectors and plots can use."""
    xs, ys = [], []
    for e in events:
        y, x = to_float(e.get(key)), to_float(e.get("step"))
        if math.isfinite(y) and math.isfinite(x):
            xs.append(int(x))
            ys.append(y)
    return xs, ys


def best_validation(vals: list[dict]) -> tuple[int, float] | None:
    """(step, loss) of the lowest finite validation loss; the first one on ties (earlier saves are smaller risks)."""
    xs, ys = finite_series(vals, "loss")
    if not ys:
        return None
    i = min(range(len(ys)), key=ys.__getitem__)
    return xs[i], ys[i]


def fit_trend(xs: list[int], ys: list[float]) -> Trend | None:
    """Least-squares line through raw losses. Raw points are nearly independent (the timestep is drawn afresh each
    step), so the standard error is honest; the EMA's points are correlated and would overstate confidence."""
    n = len(xs)
    if n < 3:
        return None
    xm, ym = sum(xs) / n, sum(ys) / n
    sxx = sum((x - xm) ** 2 for x in xs)
    if sxx == 0 or ym == 0:
        return None
    slope = sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True)) / sxx
    resid = sum((y - ym - slope * (x - xm)) ** 2 for x, y in zip(xs, ys, strict=True))
    se = math.sqrt(resid / (n - 2) / sxx)
    span = (xs[-1] - xs[0]) / abs(ym)
    t = slope / se if se > 0 else math.copysign(math.inf, slope) if slope else 0.0
    return Trend(rel_change=slope * span, rel_se=se * span, t=t)


def _tail(xs: list[int], ys: list[float], frac: float, minimum: int) -> tuple[list[int], list[float]]:
    n = max(minimum, math.ceil(len(xs) * frac))
    return xs[-n:], ys[-n:]


def _progress(last_step: int, total_steps: int | None) -> float | None:
    return last_step / total_steps if total_steps else None


def _check_nan(steps: list[dict], vals: list[dict], error: dict | None) -> Diagnosis | None:
    """First: a non-finite loss means the weights are (or would be) destroyed, whatever else the curve says."""
    bad = [e for e in (*steps, *vals) if "loss" in e and not math.isfinite(to_float(e["loss"]))]
    err = error if error and error.get("code") == "non_finite_loss" else {}
    if not bad and not err:
        return None
    step = err.get("step", bad[0].get("step") if bad else None)
    where = f" at step {step}" if step is not None else ""
    last = err.get("last_checkpoint")
    resume = f"resume from the last good save ({last})" if last else "resume from the last good save"
    return Diagnosis(
        "nan", f"The loss became NaN/Inf{where}: these weights are broken.",
        "Likely causes: the learning rate or network_alpha is too high; fp16 overflowed (set mixed precision to "
        "bf16, keep the VAE in fp32); or one image in that batch is broken (the error names the files). "
        f"Halve the learning rate and {resume}. If it fails again at the same step, check those images.")


def _check_diverging(xs: list[int], ys: list[float], steps: list[dict], vals: list[dict],
                     progress: float | None) -> Diagnosis | None:
    """A sustained rise of the loss, or an early sharp rise of validation, means the learning rate is too high."""
    wx, wy = _tail(xs, ys, RECENT_FRAC, RECENT_MIN)
    trend = fit_trend(wx, wy)
    sx, sy = finite_series(steps, "smoothed")
    since = [y for x, y in zip(sx, sy, strict=True) if x >= wx[0]]
    ema_rose = not since or since[-1] > since[0] * (1 + DIVERGE_REL / 2)  # the line the user sees rose too
    if trend and trend.rel_change > DIVERGE_REL and trend.t > DIVERGE_T and ema_rose:
        return Diagnosis(
            "diverging", f"The loss is rising: up about {trend.rel_change:.0%} over steps {wx[0]}–{wx[-1]}.",
            "Training is going the wrong way. Lower the learning rate (halve it) and resume from a save made "
            "before the rise; if it keeps rising, also lower network_alpha.")
    _, vy = finite_series(vals, "loss")
    best = best_validation(vals)
    early = progress is not None and progress < VAL_EARLY
    if best and early and len(vy) >= 3 and vy[-2] < vy[-1] and vy[-1] > best[1] * (1 + VAL_SHARP):
        return Diagnosis(
            "diverging", f"Validation loss jumped {vy[-1] / best[1] - 1:.0%} above its minimum early in the run.",
            "Rising this fast this early usually means the learning rate is too high. Lower it (halve it) and "
            f"restart, or resume from the save nearest step {best[0]}.", best_step=best[0])
    return None


def _check_overfitting(vals: list[dict]) -> Diagnosis | None:
    """Validation passed its minimum and the latest checks all sit clearly above it: later saves are worse."""
    best = best_validation(vals)
    vx, vy = finite_series(vals, "loss")
    if not best or len(vy) < OVERFIT_POINTS + 1 or best[0] in vx[-OVERFIT_POINTS:]:
        return None
    if not all(v > best[1] * (1 + OVERFIT_MARGIN) for v in vy[-OVERFIT_POINTS:]):
        return None
    kind = vals[-1].get("kind")
    caveat = (" This is a train-subset loss (no held-out images), which rises late, so the true best is likely "
              "earlier.") if kind == "train-subset" else ""
    return Diagnosis(
        "overfitting", f"Validation loss bottomed at {best[1]:.4g} (step {best[0]}) and has risen since "
        f"(now {vy[-1]:.4g}).",
        f"The LoRA is starting to memorise the training images. Pick the save nearest step {best[0]}; you can stop "
        f"the run.{caveat}", best_step=best[0])


def _val_flat(vy: list[float]) -> bool:
    return len(vy) >= 3 and max(vy[-3:]) - min(vy[-3:]) <= VAL_FLAT * min(vy[-3:])


def _check_plateau(xs: list[int], ys: list[float], vals: list[dict], progress: float | None) -> Diagnosis | None:
    """Flat for a long stretch early or mid run: the LoRA has stopped learning. The raw loss is so noisy that it
    proves flatness only over many points; validation that never improved proves it sooner."""
    if progress is not None and progress >= PLATEAU_BEFORE:
        return None
    _, vy = finite_series(vals, "loss")
    wx, wy = _tail(xs, ys, PLATEAU_FRAC, PLATEAU_MIN)
    trend = fit_trend(wx, wy) if len(xs) >= PLATEAU_MIN else None
    train_flat = bool(trend and abs(trend.rel_change) < PLATEAU_REL
                      and abs(trend.rel_change) + 2 * trend.rel_se < PLATEAU_BOUND)
    not_falling = trend is None or trend.t > FALLING_T  # a falling training loss with stuck validation is not this
    val_stuck = len(vy) >= 4 and _val_flat(vy) and min(vy) > vy[0] * (1 - VAL_LEARNED) and not_falling
    if val_stuck:
        headline = "Validation loss has barely moved since the start of the run."
    elif train_flat and (len(vy) < 3 or _val_flat(vy)):  # validation still moving: it decides, not the train loss
        headline = f"The loss has been flat since about step {wx[0]}."
    else:
        return None
    return Diagnosis(
        "plateau", headline,
        "If the samples do not show the concept yet, raise the learning rate (about 1.5–2×) or train for more "
        "steps. If the samples already look right, you can stop early and keep the latest save.")


def _band_reading(level: float, band: tuple[float, float], trend: Trend | None) -> Diagnosis:
    """Where the smoothed loss sits against the preset's band. Guidance only: the band is a community rule of
    thumb that no trainer documents, and the absolute level moves with settings and trainer versions."""
    lo, hi = band
    note = (f" The {lo:g}–{hi:g} band is a community rule of thumb for this preset, not a target: the validation "
            "curve and the samples decide when to stop.")
    if level > hi and trend and trend.t < FALLING_T:
        return Diagnosis("above_band_falling", f"Smoothed loss {level:.4g} is above the usual band and falling.",
                         "Nothing to change: keep training and watch the validation curve." + note)
    if level > hi:
        return Diagnosis("above_band", f"Smoothed loss {level:.4g} is above the usual band and not falling.",
                         "Often fine (noise offset, min-SNR and the base model move the level). Compare the samples; "
                         "if they are weak, try a higher learning rate or more steps." + note)
    if level < lo:
        return Diagnosis("below_band", f"Smoothed loss {level:.4g} is below the usual band.",
                         "Not a problem by itself. Check the samples for copies of training images." + note)
    return Diagnosis("in_band", f"Smoothed loss {level:.4g} is inside the usual band.", "Keep training." + note)


def steps_still_needed(xs: list[int], total_steps: int | None) -> int:
    """How many more steps before the curve supports a reading: MIN_POINTS points and MIN_PROGRESS of the run."""
    short_of_points = MIN_POINTS - len(xs)
    short_of_progress = math.ceil(MIN_PROGRESS * total_steps) - (xs[-1] if xs else 0) if total_steps else 0
    return max(short_of_points, short_of_progress, 0)


def _too_early(needed: int) -> Diagnosis:
    return Diagnosis("waiting", f"Too early to judge: {needed} more step{'' if needed == 1 else 's'}.",
                     f"The curve supports advice only after {MIN_POINTS} steps and {MIN_PROGRESS:.0%} of the run; "
                     "until then the early fall and the noise of each step say nothing about the settings.")


def _check_failed(error: dict | None) -> Diagnosis | None:
    """A run that ended with an error: its reason is the reading, not the curve's shape."""
    if not error or error.get("code") == "non_finite_loss":
        return None
    reason = str(error.get("msg") or "the trainer stopped with an error").strip()
    return Diagnosis("failed", f"The run failed: {reason.splitlines()[0]}",
                     "The curve up to the failure stays below; the log under it has the details.")


def diagnose(steps: list[dict], vals: list[dict], band: tuple[float, float] | None, total_steps: int | None,
             error: dict | None = None) -> Diagnosis:
    """The single most urgent reading of the run so far. Order = urgency: broken weights, a failure, then too little
    data, then problems that need action now (diverging, overfitting, plateau), then the band, then "learning"."""
    found = _check_nan(steps, vals, error) or _check_failed(error)
    if found:
        return found
    xs, ys = finite_series(steps, "loss")
    needed = steps_still_needed(xs, total_steps)
    if needed:
        return _too_early(needed)
    progress = _progress(xs[-1], total_steps)
    found = (_check_diverging(xs, ys, steps, vals, progress) or _check_overfitting(vals)
             or _check_plateau(xs, ys, vals, progress))
    best = best_validation(vals)
    best_step = best[0] if best else None
    if found:
        found.best_step = found.best_step if found.best_step is not None else best_step
        return found
    _, smoothed = finite_series(steps, "smoothed")
    level = smoothed[-1] if smoothed else sum(ys[-RECENT_MIN:]) / len(ys[-RECENT_MIN:])
    trend = fit_trend(*_tail(xs, ys, RECENT_FRAC, RECENT_MIN))
    if band:
        reading = _band_reading(level, band, trend)
    else:
        reading = Diagnosis("learning", f"Training is running; smoothed loss {level:.4g}.",
                            "Nothing unusual in the curve. Judge progress by the samples and the validation curve.")
    if best:
        reading.advice += f" Lowest validation loss so far: {best[1]:.4g} at step {best[0]}."
    reading.best_step = best_step
    return reading
