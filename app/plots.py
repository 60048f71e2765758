"""The live loss chart: a bare matplotlib Figure for gr.Plot (gr.LinePlot cannot shade the preset's loss band).

Built with matplotlib.figure.Figure, never pyplot: no global state, no GUI backend, safe in Gradio's worker threads.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from app.guidance import best_validation, finite_series

T = TypeVar("T")

RAW_COLOR = SMOOTH_COLOR = "tab:blue"  # same hue: the smoothed line reads as the trend of the faint raw one
VAL_COLOR, BEST_COLOR, BAND_COLOR = "tab:orange", "tab:red", "tab:green"
CLIP_PERCENTILES = (2, 98)  # one spike (or a NaN-adjacent blow-up) must not flatten the rest of the curve
FAILURE_COLOR = "tab:red"
FAILURE_CHARS = 90  # the title holds one line of the reason; the log under the chart has all of it


def downsample(points: list[T], max_points: int) -> list[T]:
    """Evenly strided subset that always keeps the first and the last point (the newest step must show).

    Deterministic, so the chart does not shimmer between polls. Smoothing is done on all points before this."""
    n = len(points)
    if n <= max_points:
        return list(points)
    if max_points < 2:
        return [points[-1]] if max_points == 1 else []
    idx = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))
    return [points[i] for i in idx]


def smooth_series(values: list[float], beta: float = 0.98) -> list[float]:
    """Zero-phase view: bias-corrected EMA forwards, then backwards over the result. No lag, but it uses future
    points, so it is for reading history only; live detectors use the causal EMA of the step events."""
    def ema(xs: list[float]) -> list[float]:
        out, s = [], 0.0
        for n, x in enumerate(xs, 1):
            s = beta * s + (1 - beta) * x
            out.append(s / (1 - beta**n))
        return out
    return ema(ema(values)[::-1])[::-1]


def _y_limits(raw: list[float], extra: list[float], log_scale: bool) -> tuple[float, float] | None:
    """Percentile-clipped range of the losses, widened to keep the validation points in view. The preset's band is
    not part of it: a band far from the curve would squash the curve into a flat line (the band is clipped instead)."""
    if not raw:
        return None
    lo, hi = (float(v) for v in np.percentile(raw, CLIP_PERCENTILES))
    lo, hi = min([lo, *extra]), max([hi, *extra])
    if log_scale:
        lo = min((v for v in [lo, *extra, *raw] if v > 0), default=1e-6)  # log axes cannot show 0 or negatives
        return lo / 1.15, max(hi, lo) * 1.15
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 0.05
    return lo - pad, hi + pad


def _draw_band(ax: Axes, band: tuple[float, float], limits: tuple[float, float]) -> None:
    """The band's part inside the loss range; when none of it is inside, a note says on which side it lies."""
    label = f"{band[0]:g}–{band[1]:g}: rule of thumb, not a target"
    lo, hi = max(band[0], limits[0]), min(band[1], limits[1])
    if lo < hi:
        ax.axhspan(lo, hi, color=BAND_COLOR, alpha=0.12, lw=0, gid="band", label=label)
        return
    side = "below" if band[1] <= limits[0] else "above"
    ax.text(0.99, 0.02 if side == "below" else 0.98, f"usual band {band[0]:g}–{band[1]:g}: {side} the curve",
            ha="right", va="bottom" if side == "below" else "top", transform=ax.transAxes, color=BAND_COLOR,
            fontsize="small", gid="band_note")


def _show_failure(ax: Axes, failure: str, has_points: bool) -> None:
    """A failed run says so where the chart is read, instead of a band or a "waiting" note that no longer applies."""
    first_line = failure.strip().splitlines()[0] if failure.strip() else "the run failed"
    if len(first_line) > FAILURE_CHARS:
        first_line = first_line[: FAILURE_CHARS - 1] + "…"
    ax.set_title(f"Run failed: {first_line}", color=FAILURE_COLOR, fontsize="medium", loc="left")
    if not has_points:
        ax.text(0.5, 0.5, "the run failed before its first step", ha="center", va="center", transform=ax.transAxes,
                color=FAILURE_COLOR, gid="failure_note")


def _plot_steps(ax: Axes, steps: list[dict], max_points: int, zero_phase: bool) -> list[float]:
    xs, ys = finite_series(steps, "loss")
    if not xs:
        return []
    pts = downsample(list(zip(xs, ys, strict=True)), max_points)
    ax.plot(*zip(*pts, strict=True), lw=0.6, alpha=0.3, color=RAW_COLOR, label="loss (each step)", gid="raw")
    sx, sy = (xs, smooth_series(ys)) if zero_phase else finite_series(steps, "smoothed")
    if sx:
        pts = downsample(list(zip(sx, sy, strict=True)), max_points)
        label = "smoothed (zero-phase)" if zero_phase else "smoothed (EMA)"
        ax.plot(*zip(*pts, strict=True), lw=1.8, color=SMOOTH_COLOR, label=label, gid="smoothed")
    return ys


def _plot_vals(ax: Axes, vals: list[dict]) -> list[float]:
    vx, vy = finite_series(vals, "loss")
    if not vx:
        return []
    kind = next((v.get("kind") for v in reversed(vals) if v.get("kind")), "held-out")
    ax.plot(vx, vy, marker="o", ms=4, lw=1, color=VAL_COLOR, label=f"validation ({kind})", gid="val")
    best = best_validation(vals)
    if best:
        ax.plot([best[0]], [best[1]], marker="*", ms=14, ls="none", color=BEST_COLOR, zorder=5,
                label=f"lowest validation (step {best[0]})", gid="val_min")
    return vy


def loss_figure(steps: list[dict], vals: list[dict], band: tuple[float, float] | None, max_points: int = 2000,
                log_scale: bool = False, zero_phase: bool = False, failure: str | None = None) -> Figure:
    """Raw and smoothed training loss, validation markers with the minimum starred, and the preset's band.

    zero_phase swaps the live (causal) EMA from the events for a lag-free view of the history. failure (the reason a
    run failed) replaces the band and the "waiting" note with the reason, in the title."""
    fig = Figure(figsize=(8, 4.6), layout="constrained")
    ax = fig.add_subplot()
    raw = _plot_steps(ax, steps, max_points, zero_phase)
    extra = _plot_vals(ax, vals)
    if log_scale:
        ax.set_yscale("log")
    limits = _y_limits(raw, [v for v in extra if math.isfinite(v) and (v > 0 or not log_scale)], log_scale)
    if limits:
        ax.set_ylim(*limits)
    if failure is not None:
        _show_failure(ax, failure, bool(limits))
    elif not limits:
        ax.text(0.5, 0.5, "waiting for the first steps", ha="center", va="center", transform=ax.transAxes,
                color="gray", gid="waiting")
    elif band:
        _draw_band(ax, band, limits)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.25)
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # below the axes: inside, it would cover the newest points at the right edge
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 3), fontsize="small",
                   frameon=False)
    return fig
