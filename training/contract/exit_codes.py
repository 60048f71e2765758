"""Exit status of ``python -m training`` (and of the dry run), as the supervisor and scripts read it."""

DONE = 0          # finished, or stopped on request (the last event says which)
FAILED = 1        # training failed; the reason is the run's error event and the last line on stderr
BAD_INPUT = 2     # a setting, file or folder the user must fix; one line on stderr, before any model loads
ABORTED = 130     # a second Ctrl+C: stopped at once, without saving
