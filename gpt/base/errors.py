"""The one exception type for mistakes a user can fix.

Library code raises :class:`UserError` with a message that names the problem and the fix. Only the
command-line edge (:func:`gpt.base.cli.run_cli`) turns it into one line on stderr and exit code 2; everything
else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user: a config value, a path, a prompt. The message is shown as is."""


def one_line(error: BaseException) -> str:
    """An exception's message as one line (its type if it has none): what an error line shows of
    an OSError, a failed write or a library's multi-line complaint."""
    return " ".join(str(error).split()) or type(error).__name__
