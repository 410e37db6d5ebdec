"""The environment is the one requirements.lock describes, so a drifted dependency fails a test.

`make setup` installs the locked versions and leaves ``installed-from-lock`` in the environment: the
lock's SHA-256 and the torch requirement it installed. Outside such an environment (your own, with
``pip install -e .``) these tests skip and say why.
"""

from __future__ import annotations

import hashlib
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

from tests.conftest import ROOT

LOCK = ROOT / "requirements.lock"
MARKER = Path(sys.prefix) / "installed-from-lock"
CHECKED = ("torch", "accelerate", "transformers", "datasets", "tokenizers", "wandb")


def locked_versions(lock: Path = LOCK) -> dict[str, str]:
    """``name==version`` lines of a lock (comments and markers left out)."""
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        requirement = line.split(";")[0].strip()
        if "==" in requirement and not requirement.startswith("#"):
            name, pinned = requirement.split("==")
            pins[name.strip().lower()] = pinned.strip()
    return pins


def installation() -> tuple[str, str]:
    """The lock's hash and the torch requirement this environment was installed with."""
    if not MARKER.exists():
        pytest.skip(
            f"not an environment installed from {LOCK.name} ({MARKER} is missing): run make setup"
        )
    lock_hash, torch_requirement = MARKER.read_text(encoding="utf-8").splitlines()[:2]
    return lock_hash, torch_requirement


def test_the_environment_was_installed_from_the_lock_as_it_is_now():
    lock_hash, _ = installation()
    assert lock_hash == hashlib.sha256(LOCK.read_bytes()).hexdigest(), (
        f"{LOCK.name} changed since this environment was installed: run make setup"
    )


def drift(package: str, lock: Path = LOCK) -> str | None:
    """What is wrong with the installed version of PACKAGE against LOCK, or None."""
    locked = locked_versions(lock)[package]
    installed = Version(version(package)).base_version  # 2.13.0+cpu is torch 2.13.0's CPU build
    if installed == locked:
        return None
    return (
        f"{package} {version(package)} is installed but {lock.name} says {locked}: "
        "run make setup (or make lock, then make test, to move the lock)"
    )


@pytest.mark.parametrize("package", CHECKED)
def test_the_installed_version_is_the_locked_one(package):
    _, torch_requirement = installation()
    if package == "torch" and torch_requirement != f"torch=={locked_versions()['torch']}":
        pytest.skip(
            f"torch was installed as {torch_requirement!r} (make TORCH=...), not the lock's"
        )
    assert drift(package) is None, drift(package)


def test_the_lock_pins_every_checked_package_and_the_test_runner():
    assert set(CHECKED) | {"pytest", "pytest-xdist", "uv"} <= set(locked_versions())


def test_a_drifted_version_fails_the_check(tmp_path):
    planted = tmp_path / "requirements.lock"
    planted.write_text(
        LOCK.read_text(encoding="utf-8").replace(
            f"accelerate=={locked_versions()['accelerate']}\n", "accelerate==0.0.1\n"
        ),
        encoding="utf-8",
    )
    assert "accelerate" in drift("accelerate", planted) and "says 0.0.1" in drift(
        "accelerate", planted
    )
    assert drift("tokenizers", planted) == drift("tokenizers")
