"""The faults that the campaign (``python -m bench.faults``) and the tests inject: damaged files,
including a planted pickle whose unpickling would run code, and a real small disk. Here, outside
``tests/``, so that the campaign and the tests share them without importing each other."""

from __future__ import annotations

import random
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bench import ROOT


class Payload:
    """Unpickled, this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def truncate(path: Path, marker: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path, marker: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path, marker: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(max(path.stat().st_size, 64)))


def plant_pickle(path: Path, marker: Path) -> None:
    torch.save(Payload(marker), path)


def can_mount_a_small_disk(where: Path) -> bool:
    """Whether this machine lets a user mount a tmpfs in a private mount namespace (unshare -rm)."""
    if shutil.which("unshare") is None:
        return False
    mount = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(where))}"
    return (
        subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True).returncode == 0
    )


def run_on_a_small_disk(
    args: list[str], disk: Path, kib: int, out: Path, kept: Path, **run
) -> subprocess.CompletedProcess:
    """``python ARGS`` with ``disk`` a ``kib`` KiB tmpfs of a private mount namespace. The output
    folder ``out`` on it is copied to ``kept`` at the end: the tmpfs ends with the namespace."""
    script = (
        f"mount -t tmpfs -o size={kib}k tmpfs {shlex.quote(str(disk))} && "
        f"{shlex.join([sys.executable, *args])}; status=$?; "
        f"cp -a {shlex.quote(str(out))} {shlex.quote(str(kept))}; exit $status"
    )
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, **run
    )
