"""The faults that the campaign (``python -m bench.faults``) and the tests inject: damaged files,
including a planted pickle whose unpickling would run code, flipped bytes and swapped tokenizers,
and real small or read-only filesystems. Here, outside
``tests/``, so that the campaign and the tests share them without importing each other."""

from __future__ import annotations

import json
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


def flip_last_byte(path: Path) -> None:
    """One flipped byte in the last tensor's data: the file still parses and loads."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def swap_two_tokens(tokenizer: Path) -> None:
    """Another tokenizer of the same size: two characters trade their ids."""
    content = json.loads(tokenizer.read_text(encoding="utf-8"))
    vocab = content["model"]["vocab"]
    vocab["a"], vocab["e"] = vocab["e"], vocab["a"]
    tokenizer.write_text(json.dumps(content), encoding="utf-8")


def run_with_mount(
    mount: str, args: list[str], disk: Path, listing: Path, **run
) -> subprocess.CompletedProcess:
    """``python ARGS`` in a private mount namespace where ``mount`` (a shell command) has been
    run; ``listing`` receives every path under ``disk`` afterwards (the mount ends with it)."""
    script = (
        f"{mount} && {shlex.join([sys.executable, *args])}; status=$?; "
        f"find {shlex.quote(str(disk))} -mindepth 1 > {shlex.quote(str(listing))}; exit $status"
    )
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **run,
    )


def read_only_tmpfs(disk: Path) -> str:
    """The mount command of an empty read-only filesystem at ``disk``."""
    return f"mount -t tmpfs -o ro,size=64k tmpfs {shlex.quote(str(disk))}"


def read_only_bind(folder: Path) -> str:
    """``folder`` itself made read-only (as a copy on a read-only share would be)."""
    quoted = shlex.quote(str(folder))
    return f"mount --bind {quoted} {quoted} && mount -o remount,bind,ro {quoted}"


def full_tmpfs(disk: Path, kib: int, free_kib: int, copy: Path | None = None) -> str:
    """The mount command of a ``kib`` KiB filesystem at ``disk`` holding a copy of ``copy`` (if
    given) and a file ``filler`` that leaves ``free_kib`` KiB free: a real full disk."""
    where = shlex.quote(str(disk))
    filler = shlex.quote(str(disk / "filler"))
    steps = [f"mount -t tmpfs -o size={kib}k tmpfs {where}"]
    if copy is not None:
        steps.append(f"cp -a {shlex.quote(str(copy))} {where}/")
    steps.append(f"{{ cat /dev/zero > {filler} 2>/dev/null; truncate -s -{free_kib}k {filler}; }}")
    return " && ".join(steps)
