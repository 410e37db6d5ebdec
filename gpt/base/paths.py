"""Why a path is not what a command expected: missing, the wrong kind, or a link that leads
nowhere. One wording for every command, so that "does not exist" is never said of a folder given
where a file belongs, or of a symbolic link loop."""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def why_not(path: Path, wanted: Literal["file", "folder"]) -> str:
    """What is wrong with ``path`` as a ``wanted`` (call it when it is not one): a phrase such as
    "does not exist" or "is a folder, not a file", to follow the path in an error line."""
    if path.is_symlink() and not path.exists():
        return "is a symbolic link that leads nowhere (broken, or a loop)"
    if wanted == "file" and path.is_dir():
        return "is a folder, not a file"
    if wanted == "folder" and path.exists():
        return "is a file, not a folder"
    return "does not exist"
