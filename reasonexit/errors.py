"""User-facing errors.

Anything a user can cause (a bad model path, an unknown dataset, a malformed row or config) is
raised as :class:`UserError`. The CLI prints its message as one line and exits non-zero; it never
shows a traceback for these.
"""


class UserError(Exception):
    """An error caused by user input; its message is shown as one line, without a traceback."""
