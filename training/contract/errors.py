"""Errors that reach the user as one line, never as a traceback."""

from training.contract import exit_codes


class UserError(Exception):
    """Bad input the user can fix (a setting, a file, a folder). The message names it and says what to do.

    The CLI prints ``error: <message>`` and exits with ``exit_status`` (2, bad input) before any model is loaded
    where possible. ``reported`` is set once the message has been shown (e.g. echoed from the event stream), so it
    shows once.
    """

    reported: bool = False
    exit_status: int = exit_codes.BAD_INPUT


class NoSpaceLeft(UserError):
    """The disk filled up during a run: still one line and no traceback, but the run failed (status 1); its input
    was fine."""

    exit_status = exit_codes.FAILED
