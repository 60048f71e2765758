"""The frame every run executes in, real or dry: Ctrl+C and SIGTERM ask for a stop, an exception becomes the
run's one error event, and the event stream is closed however the run ends."""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterator

from training.contract.control import Control, install_signal_handlers, restore_signal_handlers
from training.contract.errors import UserError
from training.contract.events import EventWriter


@contextlib.contextmanager
def reporting(events: EventWriter, control: Control) -> Iterator[None]:
    """Signals ask for a stop; an exception becomes the run's one error event (a UserError without traceback;
    anything already reported, e.g. a NaN stop, is left alone); the stream is closed."""
    previous = install_signal_handlers(control)
    try:
        yield
    except Exception as err:
        if not getattr(err, "reported", False):
            if isinstance(err, UserError):
                events.emit("error", msg=str(err), traceback=None)
                err.reported = events.echo is not None and events.enabled  # shown on the console already
            else:
                events.emit("error", msg=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        restore_signal_handlers(previous)
        events.close()
