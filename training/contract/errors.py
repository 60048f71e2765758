"""Errors that reach the user as one line, never as a traceback."""


class UserError(Exception):
    """Bad input the user can fix (a setting, a file, a folder). The message names it and says what to do.

    The CLI prints ``error: <message>`` and exits with status 2 before any model is loaded where possible.
    ``reported`` is set once the message has been shown (e.g. echoed from the event stream), so it shows once.
    """

    reported: bool = False
