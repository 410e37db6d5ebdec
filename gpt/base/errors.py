"""The errors a user, or the filesystem, can cause: each is one line, never a traceback.

Library code raises :class:`UserError` with a message that names the problem and the fix. Only the
command-line edge (:func:`gpt.base.cli.run_cli`) turns it into one line on stderr and exit code 2; it
does the same with any :class:`OSError` (a read-only or full disk, a file where a folder should
be), in the words of :func:`describe_os_error`. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from types import TracebackType


class UserError(Exception):
    """Bad input from the user: a config value, a path, a prompt. The message is shown as is."""


# What the innermost function that failed was doing, in words (Python's and pathlib's names).
_OPERATIONS = {
    "mkdir": "create the folder",
    "makedirs": "create the folder",
    "touch": "create",
    "open": "open",
    "write_text": "write",
    "write_bytes": "write",
    "write": "write",
    "read_text": "read",
    "read_bytes": "read",
    "replace": "rename",
    "rename": "rename",
    "unlink": "remove",
    "rmtree": "remove",
    "rmdir": "remove",
    "copyfile": "copy",
    "fsync": "flush to disk",
}


def describe_os_error(error: OSError) -> str:
    """``could not write out/x/config.yaml (Read-only file system)``: the operation, the file and
    the reason in one line, and on a full disk the space left on it."""
    operation = _operation(error.__traceback__)
    target = " ".join(str(name) for name in (error.filename, error.filename2) if name is not None)
    reason = error.strerror or str(error) or type(error).__name__
    line = f"could not {operation}{' ' + target if target else ''} ({reason})"
    if error.errno == errno.ENOSPC and error.filename is not None:
        free = shutil.disk_usage(_existing(Path(os.fsdecode(error.filename)))).free / 2**20
        line += f"; {free:.1f} MiB free on its disk: free some space"
    elif error.errno == errno.EROFS:
        line += ": the filesystem is mounted read-only; write somewhere else"
    return line


def _operation(traceback: TracebackType | None) -> str:
    """The operation of the outermost frame named like one: the intent (``write_text``), not the
    step inside it that failed (its ``open``); "write" if no frame is."""
    while traceback is not None:
        name = traceback.tb_frame.f_code.co_name
        if name in _OPERATIONS:
            return _OPERATIONS[name]
        traceback = traceback.tb_next
    return "write"


def _existing(path: Path) -> Path:
    """``path`` or its nearest folder that exists (where the disk usage can be asked)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def one_line(error: BaseException) -> str:
    """An exception's message as one line (its type if it has none): what an error line shows of
    an OSError, a failed write or a library's multi-line complaint."""
    return " ".join(str(error).split()) or type(error).__name__
