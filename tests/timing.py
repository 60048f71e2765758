"""One knob for every time limit in the tests: ``LORAFORGE_TEST_TIME_FACTOR`` (default 1) multiplies them all, for
a loaded or slow machine (``LORAFORGE_TEST_TIME_FACTOR=4 pytest ...``).

The limits only keep a hung child or page from hanging the whole run; they never measure speed (that is
docs/benchmarks.md's job). Anything a test asserts about time is a limit of the same kind, scaled the same way.
"""

from __future__ import annotations

import os


def _factor() -> float:
    try:
        return max(1.0, float(os.environ.get("LORAFORGE_TEST_TIME_FACTOR") or 1))
    except ValueError:
        return 1.0


TIME_FACTOR = _factor()


def scaled(seconds: float) -> float:
    """A time limit in seconds, stretched by the factor."""
    return seconds * TIME_FACTOR


def ms(seconds: float) -> int:
    """The same in milliseconds, as Playwright takes them."""
    return int(scaled(seconds) * 1000)
