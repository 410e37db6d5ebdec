"""Files and folders written so that nothing is ever half-written.

Everything goes to a temporary name beside its target first and is renamed into place when
complete: a rename within a folder is atomic, so a kill at any instant leaves the old file (or
folder) or the new one, never a mix. The temporary names carry the process id, so two processes
never write through the same one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def replace_file(path: Path, write: Callable[[Path], None]) -> None:
    """Create or replace ``path`` with what ``write(temporary)`` writes to a temporary file."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except OSError as error:  # name the file the user asked for, not its temporary name
        if error.filename in (str(temporary), None):  # None: a write through an open file
            error.filename = str(path)
        raise
    finally:
        if temporary.exists():  # not once renamed (and unlink would fail on a read-only disk)
            temporary.unlink()


@contextmanager
def naming(path: Path) -> Iterator[None]:
    """Let an OSError raised in the block name ``path`` if it names no file: a write through an
    open file names none, and the command's edge (gpt.cli) says which file failed."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


def write_text(path: Path, text: str) -> None:
    """Create or replace the UTF-8 text file ``path``."""
    replace_file(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


@contextmanager
def staging_folder(out: Path) -> Iterator[Path]:
    """A fresh folder ``OUT.tmp-<pid>`` beside ``out`` to write into; removed if anything fails
    before :func:`publish_folder` renames it. The staging folders of writers that were killed
    are removed first, with a note (the caller holds ``out``: see :mod:`gpt.base.folder_lock`)."""
    for abandoned in abandoned_staging_folders(out):
        shutil.rmtree(abandoned, ignore_errors=True)
        print(f"note: removed {abandoned}, left by a process that was stopped", file=sys.stderr)
    staging = sibling(out, "tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with naming(out):  # a write through an open file names no file: name the folder
            yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # a no-op once published


def abandoned_staging_folders(out: Path) -> list[Path]:
    """The ``OUT.tmp-<pid>`` folders beside ``out`` whose process no longer runs on this machine."""
    out = out.absolute()
    found = []
    for staging in out.parent.glob(f"{glob.escape(out.name)}.tmp-*"):
        pid = staging.name.rpartition("-")[2]
        if staging.is_dir() and pid.isdigit() and not _running(int(pid)):
            found.append(staging)
    return sorted(found)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def publish_folder(staging: Path, out: Path) -> None:
    """Flush a finished staging folder to disk and rename it to ``out``. An earlier, non-empty
    ``out`` is renamed aside first and removed only once the new one is in place."""
    for file in staging.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(staging, out)
        return
    old = sibling(out, "old")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old)


def sibling(out: Path, label: str) -> Path:
    """``OUT.label-<pid>``: a name beside ``out`` that no other process and no trainer uses."""
    out = out.absolute()
    return out.with_name(f"{out.name}.{label}-{os.getpid()}")


def sha256(*paths: Path) -> str:
    """SHA-256 of the files' bytes, one after the other, read a MiB at a time."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def use_default_permissions(path: Path) -> None:
    """safetensors creates files readable by their owner only; give this one the permissions any
    new file gets (rw-r--r-- under the usual umask), so the weights can be shared like the rest."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def save_safetensors(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    """safetensors' ``save_file``, but a failed write is raised as the OSError it is, naming
    ``path``: safetensors reports one as ``SafetensorError("... I/O error: No space left on
    device (os error 28)")``, which names no file and which the command's edge would not know."""
    import safetensors.torch  # imports torch: only where weights are written

    try:
        safetensors.torch.save_file(tensors, str(path), metadata=metadata)
    except safetensors.SafetensorError as error:
        code = re.search(r"\(os error (\d+)\)", str(error))
        if code is None:
            raise
        number = int(code.group(1))
        raise OSError(number, os.strerror(number), str(path)) from None
