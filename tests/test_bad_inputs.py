"""Bad input, across every command: every case of the table in bench/bad_inputs.py is refused
with one line and exit code 2, and no file changes (see that module for what is checked)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.bad_inputs import (
    CASES,
    LaunchEnvironment,
    launch_environments,
    prepare_folders,
    refusal_problems,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    return prepare_folders(tmp_path_factory.mktemp("good"))


@pytest.fixture(scope="module")
def launch_environment(folders, tmp_path_factory) -> LaunchEnvironment:
    return launch_environments(folders, lambda: tmp_path_factory.mktemp("launch"))


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_and_exit_code_2(name, folders, launch_environment, tmp_path):
    case = CASES[name]
    if case.cpu_only and torch.cuda.is_available():
        pytest.skip("bad input only on a machine without a GPU")
    problems = refusal_problems(case, folders, launch_environment, tmp_path / "work")
    assert problems == []


def test_the_table_is_broad():
    commands = {
        case.command[1] if case.command[0] == "-m" else case.command[0] for case in CASES.values()
    }
    assert commands == {
        "data_prep", "train.py", "sample.py", "gpt.evaluate", "gpt.export", "gpt.report", "gpt.sweep"
    }  # fmt: skip
    assert any(case.launch for case in CASES.values())  # accelerate launch ... train.py
    assert len(CASES) >= 100
