"""Loss smoothing, throughput and ETA: host-side bookkeeping done at read-back points, never inside a step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class LossEMA:
    """Bias-corrected exponential moving average (Adam-style): s_n / (1 - beta^n).

    Unlike a plain EMA it does not start near zero, so the first points of the smoothed curve are meaningful.
    Non-finite values are not folded in (the run stops on them anyway).
    """

    beta: float = 0.98
    value: float = 0.0
    count: int = 0

    def update(self, x: float) -> float:
        if math.isfinite(x):
            self.value = self.beta * self.value + (1 - self.beta) * x
            self.count += 1
        return self.smoothed

    @property
    def smoothed(self) -> float:
        return self.value / (1 - self.beta**self.count) if self.count else float("nan")


@dataclass
class Throughput:
    """Images per second over a sliding window of read-backs, and an ETA for the remaining steps."""

    window: list[tuple[float, int, int]] = field(default_factory=list)  # (time, step, images)

    def record(self, now: float, step: int, images: int) -> None:
        self.window.append((now, step, images))
        del self.window[:-20]

    def images_per_second(self) -> float:
        if len(self.window) < 2:
            return 0.0
        (t0, _, i0), (t1, _, i1) = self.window[0], self.window[-1]
        return (i1 - i0) / (t1 - t0) if t1 > t0 else 0.0

    def seconds_per_step(self) -> float:
        if len(self.window) < 2:
            return 0.0
        (t0, s0, _), (t1, s1, _) = self.window[0], self.window[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else 0.0

    def eta(self, remaining_steps: int) -> float:
        return self.seconds_per_step() * remaining_steps

