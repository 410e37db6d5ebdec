"""make setup says what it is doing while it installs, which takes minutes on a fresh machine."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from .conftest import ROOT


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_setup_says_what_it_does_before_each_install(tmp_path):
    venv = tmp_path / "venv"
    pip = venv / "bin" / "pip"  # a stand-in that says it ran: the recipe runs, installs nothing
    pip.parent.mkdir(parents=True)
    pip.write_text('#!/bin/sh\necho "pip ran: $*"\n')
    pip.chmod(0o755)
    result = subprocess.run(
        ["make", "--no-print-directory", "setup", f"VENV={venv}", "PYTHON=true"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stdout.splitlines() if line.startswith(("setup: ", "pip ran"))]
    assert said[0].startswith(f"setup: creating {venv} and installing the locked versions")
    steps = "".join("p" if line.startswith("pip ran") else "s" for line in said)
    assert re.fullmatch("s(sp)+s", steps), said  # a line before each install, one at the end
    assert said[-1] == "setup: done"
    assert (venv / "bin" / ".installed").is_file()
