"""The frame every run executes in, real or dry: Ctrl+C and SIGTERM ask for a stop, an exception becomes the
run's one error event, and the event stream is closed however the run ends."""

from __future__ import annotations

import contextlib
import sys
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
            record_error(events, err)
        raise
    finally:
        restore_signal_handlers(previous)
        events.close()


def record_error(events: EventWriter, err: Exception) -> None:
    """The error event; ``err.traceback_in`` names the file holding the traceback once it is written. When the event
    cannot be written (the disk is full, the folder went away) the caller shows the error itself."""
    user_error = isinstance(err, UserError)
    try:
        if user_error:
            events.emit("error", msg=str(err), traceback=None)
        else:
            events.emit("error", msg=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
    except OSError:
        return
    if user_error:
        err.reported = events.echo is not None and events.enabled  # shown on the console already
    elif events.enabled:
        err.traceback_in = events.path


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def report_crash(err: BaseException) -> None:
    """An unexpected error on stderr. When the run's event log holds it, the error line was echoed from there and
    only the log is named; otherwise (it failed before the log could be written) the traceback, then the reason as
    the last line, which is the line a supervisor shows."""
    where = getattr(err, "traceback_in", None)
    if where is not None and where.is_file():
        print(f"the full traceback is in {where}", file=sys.stderr)
        return
    traceback.print_exception(err, file=sys.stderr)
    print(f"error: {one_line(err)}", file=sys.stderr)
