"""The loss chart: it plots the events it is given (raw, smoothed, validation, band), robust to NaN and spikes,
renders headless to PNG."""

from __future__ import annotations

import io
import math

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from app.plots import downsample, loss_figure, smooth_series


def steps(n: int, spike_at: int | None = None) -> list[dict]:
    out = []
    for s in range(1, n + 1):
        loss = 0.1 + 0.1 * math.exp(-s / 200) + 0.01 * math.sin(s)
        if s == spike_at:
            loss = 50.0
        out.append({"event": "step", "step": s, "loss": loss, "smoothed": 0.1 + 0.1 * math.exp(-s / 200)})
    return out


VALS = [{"event": "val", "step": s, "loss": v, "kind": "held-out"} for s, v in
        [(100, 0.15), (200, 0.12), (300, 0.11), (400, 0.115), (500, 0.125)]]


def artist(fig: Figure, gid: str):
    ax = fig.axes[0]
    found = [a for a in (*ax.lines, *ax.patches) if a.get_gid() == gid]
    return found[0] if found else None


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def line_data(fig: Figure, gid: str) -> tuple[list[float], list[float]]:
    line = artist(fig, gid)
    return [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]


def band_y_extent(fig: Figure) -> tuple[float, float]:
    """The band's bottom and top in data units (axhspan spans the axes' width, y in data)."""
    band = artist(fig, "band")
    return band.get_y(), band.get_y() + band.get_height()


def zero_phase_reference(values: list[float], beta: float = 0.98) -> list[float]:
    """A bias-corrected EMA run forwards, then backwards over its result, written out here as the oracle."""
    forward, average = [], 0.0
    for n, v in enumerate(values, 1):
        average = beta * average + (1 - beta) * v
        forward.append(average / (1 - beta**n))
    backward, average = [], 0.0
    for n, v in enumerate(reversed(forward), 1):
        average = beta * average + (1 - beta) * v
        backward.append(average / (1 - beta**n))
    return backward[::-1]


def test_lines_plot_the_events_values():
    data, band = steps(300), (0.08, 0.14)
    fig = loss_figure(data, VALS, band)
    assert line_data(fig, "raw") == ([e["step"] for e in data], [e["loss"] for e in data])
    assert line_data(fig, "smoothed") == ([e["step"] for e in data], [e["smoothed"] for e in data])
    assert line_data(fig, "val") == ([v["step"] for v in VALS], [v["loss"] for v in VALS])
    lo, hi = fig.axes[0].get_ylim()
    assert band_y_extent(fig) == (max(band[0], lo), min(band[1], hi))  # the band's part inside the loss range


def test_zero_phase_line_is_the_forward_backward_ema_of_the_losses():
    data = steps(300)
    xs, ys = line_data(loss_figure(data, [], None, zero_phase=True), "smoothed")
    assert xs == [e["step"] for e in data]
    assert ys == pytest.approx(zero_phase_reference([e["loss"] for e in data]), rel=1e-12)


def test_non_finite_points_are_left_out_and_the_rest_kept_in_place():
    data = steps(20)
    data[3]["loss"], data[7]["loss"], data[9]["smoothed"] = "nan", float("inf"), float("nan")
    vals = [*VALS, {"event": "val", "step": 600, "loss": "inf", "kind": "held-out"}]
    fig = loss_figure(data, vals, None)
    kept = [e for e in data if e["step"] not in (4, 8)]
    assert line_data(fig, "raw") == ([e["step"] for e in kept], [e["loss"] for e in kept])
    assert line_data(fig, "smoothed")[0] == [e["step"] for e in data if e["step"] != 10]
    assert line_data(fig, "val") == ([v["step"] for v in VALS], [v["loss"] for v in VALS])


def test_figure_has_raw_smoothed_validation_and_band():
    fig = loss_figure(steps(500), VALS, (0.08, 0.14))
    assert isinstance(fig, Figure)
    assert artist(fig, "raw") is not None and artist(fig, "smoothed") is not None
    assert artist(fig, "val") is not None
    band = artist(fig, "band")
    assert band is not None and "rule of thumb" in band.get_label()
    best = artist(fig, "val_min")
    assert list(best.get_xdata()) == [300] and list(best.get_ydata()) == [0.11]
    assert fig.axes[0].get_xlabel() == "step"


def test_no_band_no_band_patch():
    fig = loss_figure(steps(100), [], None)
    assert artist(fig, "band") is None and artist(fig, "val_min") is None


def test_a_spike_does_not_flatten_the_plot():
    lo, hi = loss_figure(steps(500, spike_at=250), [], None).axes[0].get_ylim()
    assert hi < 1.0 and lo > 0.0


def test_y_limits_keep_validation_in_view():
    vals = [*VALS, {"event": "val", "step": 550, "loss": 0.3, "kind": "held-out"}]
    lo, hi = loss_figure(steps(500), vals, None).axes[0].get_ylim()
    assert lo <= 0.11 and hi >= 0.3


def test_a_band_far_from_the_curve_does_not_squash_it():
    """The y-range comes from the losses; the band is drawn clipped to it, or named in a note when outside."""
    data = steps(500)
    losses = [e["loss"] for e in data]
    plain = loss_figure(data, [], None).axes[0].get_ylim()
    for band in ((0.5, 0.9), (0.0, 0.02)):
        fig = loss_figure(data, [], band)
        assert fig.axes[0].get_ylim() == plain
        assert artist(fig, "band") is None
        note = next(t for t in fig.axes[0].texts if t.get_gid() == "band_note")
        assert f"{band[0]:g}–{band[1]:g}" in note.get_text()
        assert ("above" if band[0] > 0.2 else "below") in note.get_text()
    fig = loss_figure(data, [], (0.15, 3.0))
    lo, hi = fig.axes[0].get_ylim()
    assert (lo, hi) == plain and hi - lo < 0.2 and hi > max(losses) * 0.9
    assert band_y_extent(fig) == (0.15, hi)


def overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_legend_does_not_cover_the_plot():
    fig = loss_figure(steps(500), VALS, (0.08, 0.14))
    FigureCanvasAgg(fig).draw()  # lays the figure out, as rendering it for the browser does
    ax = fig.axes[0]
    legend = ax.get_legend() or fig.legends[0]
    renderer = fig.canvas.get_renderer()
    assert len(legend.get_texts()) == 5  # raw, smoothed, validation, lowest validation, band
    assert not overlap(legend.get_window_extent(renderer), ax.get_window_extent(renderer))


@pytest.mark.parametrize("n", [0, 5, 300])
def test_a_failed_run_shows_the_failure_not_the_band_or_waiting(n):
    fig = loss_figure(steps(n), [], (0.08, 0.14), failure="CUDA out of memory. Tried to allocate 2 GiB\nmore")
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    assert "Run failed: CUDA out of memory. Tried to allocate 2 GiB" in ax.get_title(loc="left")
    assert artist(fig, "band") is None and not any("waiting" in t for t in texts)
    assert ("failed before its first step" in " ".join(texts)) == (n == 0)
    assert png_bytes(fig)[:4] == b"\x89PNG"


def test_non_finite_values_do_not_crash():
    data = steps(200)
    data[10]["loss"], data[11]["loss"], data[12]["smoothed"] = "nan", "inf", float("nan")
    vals = [*VALS, {"event": "val", "step": 600, "loss": "nan", "kind": "held-out"}]
    for log_scale in (False, True):
        fig = loss_figure(data, vals, (0.08, 0.14), log_scale=log_scale)
        assert all(math.isfinite(v) for v in fig.axes[0].get_ylim())
        raw = artist(fig, "raw")
        assert all(math.isfinite(y) for y in raw.get_ydata()) and len(raw.get_ydata()) == 198
        assert png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_and_log_and_zero_phase_figures_render():
    assert png_bytes(loss_figure([], [], None))[:4] == b"\x89PNG"
    fig = loss_figure(steps(300), VALS, (0.08, 0.14), log_scale=True, zero_phase=True)
    assert fig.axes[0].get_yscale() == "log" and "zero-phase" in artist(fig, "smoothed").get_label()
    assert len(png_bytes(fig)) > 1000


def test_long_runs_are_downsampled_for_the_browser():
    fig = loss_figure(steps(20_000), [], None, max_points=2000)
    xs = list(artist(fig, "raw").get_xdata())
    assert len(xs) <= 2000 and xs[0] == 1 and xs[-1] == 20_000


@pytest.mark.parametrize("n", [0, 1, 5, 2000, 2001, 9999])
def test_downsample_keeps_first_and_last_and_caps_length(n):
    points = list(range(n))
    out = downsample(points, 2000)
    assert len(out) <= 2000 and out == sorted(out)
    if n:
        assert out[0] == 0 and out[-1] == n - 1
    assert out == downsample(points, 2000)  # deterministic: the chart does not shimmer between polls
    if n <= 2000:
        assert out == points


def test_smooth_series_has_no_lag_on_a_ramp():
    ramp = [float(i) for i in range(200)]
    smoothed = smooth_series(ramp, beta=0.9)
    assert len(smoothed) == 200 and abs(smoothed[100] - 100) < 1  # a causal EMA would trail by ~9
