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
    """Percentile-clipped raw range, widened to keep the validation points and the band in view."""
    if not raw:
        return None
    lo, hi = (float(v) for v in np.percentile(raw, CLIP_PERCENTILES))
    lo, hi = min([lo, *extra]), max([hi, *extra])
    if log_scale:
        lo = min((v for v in [lo, *extra, *raw] if v > 0), default=1e-6)  # log axes cannot show 0 or negatives
        return lo / 1.15, max(hi, lo) * 1.15
    pad = (hi - lo) * 0.05 or abs(hi) * 0.05 or 0.05
    return lo - pad, hi + pad


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
                log_scale: bool = False, zero_phase: bool = False) -> Figure:
    """Raw and smoothed training loss, validation markers with the minimum starred, and the preset's band.

    zero_phase swaps the live (causal) EMA from the events for a lag-free view of the history."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    raw = _plot_steps(ax, steps, max_points, zero_phase)
    extra = _plot_vals(ax, vals)
    if band:
        ax.axhspan(band[0], band[1], color=BAND_COLOR, alpha=0.12, lw=0, gid="band",
                   label=f"{band[0]:g}–{band[1]:g}: rule of thumb, not a target")
        extra += list(band)
    if log_scale:
        ax.set_yscale("log")
    limits = _y_limits(raw, [v for v in extra if math.isfinite(v) and (v > 0 or not log_scale)], log_scale)
    if limits:
        ax.set_ylim(*limits)
    else:
        ax.text(0.5, 0.5, "waiting for the first steps", ha="center", va="center", transform=ax.transAxes,
                color="gray")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize="small")
    return fig
