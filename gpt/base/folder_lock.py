"""One writer per folder: a lock that a command holds on the folder it writes, for its whole life.

``train.py`` holds its ``train.out_dir``, ``python -m data_prep`` its ``--out`` and
``python -m gpt.export`` its ``DIR``. The lock is ``.NAME.lock`` beside the folder ``NAME`` (beside,
not inside: data_prep and export create their folder by renaming a finished one into place), taken
with :mod:`filelock`, whose lock is the operating system's (``flock``): the kernel releases it when
its process ends, however it ends, so a SIGKILLed or powered-off holder never blocks the next one.

Beside the lock, ``.NAME.lock.json`` names its holder (command, host, pid, since when), so that a
refusal can say who holds the folder. A clean release removes both files; a holder file found by a
process that got the lock anyway was left by a holder that died, and the new holder says it takes
the folder over.

On a shared filesystem the lock is only as good as the filesystem's ``flock``: local disks and
tmpfs honour it; NFSv4 clients and NFSv3 clients with a lock manager (``nlm``) map it onto
byte-range locks the server holds for all clients; a mount with ``nolock`` or ``local_lock=flock``
keeps it on one machine, where two machines can both take it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from gpt.base.errors import UserError
from gpt.base.files import write_text


def lock_path(folder: Path) -> Path:
    """``.NAME.lock`` beside ``folder``."""
    folder = folder.absolute()
    return folder.with_name(f".{folder.name}.lock")


def holder_path(folder: Path) -> Path:
    """``.NAME.lock.json``: who holds the lock of ``folder``."""
    lock = lock_path(folder)
    return lock.with_name(f"{lock.name}.json")


@contextmanager
def hold_folder(folder: Path, command: str, option: str) -> Iterator[None]:
    """Hold ``folder`` for ``command`` (a name such as ``train.py``) while the block runs.

    Another holder that is alive refuses this one with a :class:`UserError` naming it; ``option``
    is the setting that names the folder (``train.out_dir``), which the user may change instead.
    ``folder`` itself need not exist yet, but must be a folder if it does.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option} {folder} is a file, not a folder; choose another {option}")
    folder.absolute().parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_path(folder))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{folder} is in use by {_describe(read_holder(folder))}; wait for it to end (or stop "
            f"it), or choose another {option}"
        ) from None
    try:
        left = read_holder(folder)
        if left is not None:
            print(
                f"note: {folder} was held by {_describe(left)}, which ended without releasing it; "
                "taking it over",
                file=sys.stderr,
            )
        _write_holder(folder, command)
        yield
    finally:  # removed while still held (filelock retries on a lock file unlinked under it)
        holder_path(folder).unlink(missing_ok=True)
        lock_path(folder).unlink(missing_ok=True)
        lock.release()


def read_holder(folder: Path) -> dict | None:
    """The holder ``.NAME.lock.json`` names, or None when there is none (or it is unreadable:
    a holder killed while writing it)."""
    try:
        holder = json.loads(holder_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _write_holder(folder: Path, command: str) -> None:
    since = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    holder = {"command": command, "host": socket.gethostname(), "pid": os.getpid(), "since": since}
    write_text(holder_path(folder), json.dumps(holder) + "\n")


def _describe(holder: dict | None) -> str:
    """``train.py (pid 123 on host, since 2026-12-07 18:40:00 UTC)``, in words."""
    if holder is None:
        return "another process (which did not say which)"
    return (
        f"{holder.get('command', 'another process')} (pid {holder.get('pid', '?')} on "
        f"{holder.get('host', '?')}, since {holder.get('since', '?')})"
    )
