"""Checkpoints on disk: the manifest, and damaged files met on resume. (The sub-folders of a
sharded checkpoint, written by two real FSDP processes, are tests/test_fsdp.py's.)

Damage is done to real checkpoints of a real run, then the real command resumes: a truncated file,
an emptied one, garbage bytes, and a pickle that would create a file if anything unpickled it.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from bench.injection import empty, garbage, plant_pickle, truncate

from .test_trainer import run_python, train_args

STATE_FILES = ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "trainer_state.json"]
FIVE_CHECKPOINTS = [
    "train.max_iters=5",
    "train.checkpoint_interval=1",
    "train.keep_checkpoints=10",
    "train.eval_interval=5",
]


# ----- damaged checkpoints met on resume ---------------------------------------------------------


DAMAGE = {5: truncate, 4: empty, 3: garbage, 2: plant_pickle}  # checkpoint step: what is done to it


@pytest.fixture(scope="module")
def five_checkpoints(shakespeare_char, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("five") / "run"
    result = run_python(*train_args(shakespeare_char, out, *FIVE_CHECKPOINTS))
    assert result.returncode == 0, result.stderr
    return out


def checkpoint(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:07d}"


def test_the_planted_pickle_runs_code_when_unpickled(tmp_path):
    """The payload of these tests is live: loading it without weights_only creates the marker."""
    marker = tmp_path / "payload-ran"
    plant_pickle(tmp_path / "state.bin", marker)
    torch.load(tmp_path / "state.bin", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", STATE_FILES)
def test_damaged_checkpoints_are_set_aside_and_the_newest_intact_one_resumes(
    name, five_checkpoints, shakespeare_char, tmp_path
):
    out, marker = tmp_path / "run", tmp_path / "payload-ran"
    shutil.copytree(five_checkpoints, out)
    damaged = {}
    for step, damage in DAMAGE.items():
        damage(checkpoint(out, step) / name, marker)
        damaged[step] = (checkpoint(out, step) / name).read_bytes()

    result = run_python(*train_args(shakespeare_char, out, *FIVE_CHECKPOINTS, "train.max_iters=6"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    for step, content in damaged.items():
        aside = out / "checkpoints" / f"damaged-step_{step:07d}"
        assert f"checkpoint {checkpoint(out, step)} is damaged ({name}" in result.stdout
        assert f"set aside as {aside}; trying step_{step - 1:07d}" in result.stdout
        assert (aside / name).read_bytes() == content  # kept as found, for a post-mortem
    assert f"resumed from {checkpoint(out, 1)} at step 1" in result.stdout
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == [
        f"step_{step:07d}" for step in range(1, 7)
    ]


def test_a_checkpoint_that_matches_its_manifest_but_does_not_load_is_set_aside(
    five_checkpoints, shakespeare_char, tmp_path
):
    """A foreign checkpoint, consistent with itself: the loading refuses it, and runs nothing."""
    out, marker = tmp_path / "run", tmp_path / "payload-ran"
    shutil.copytree(five_checkpoints, out)
    plant_pickle(checkpoint(out, 5) / "optimizer.bin", marker)
    garbage(checkpoint(out, 4) / "model.safetensors", marker)
    for step in (5, 4):
        rewrite_manifest(checkpoint(out, step))

    result = run_python(*train_args(shakespeare_char, out, *FIVE_CHECKPOINTS, "train.max_iters=6"))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    for step in (5, 4):
        assert f"checkpoint {checkpoint(out, step)} could not be loaded (" in result.stdout
        assert (out / "checkpoints" / f"damaged-step_{step:07d}").is_dir()
    assert f"resumed from {checkpoint(out, 3)} at step 3" in result.stdout


def rewrite_manifest(folder: Path) -> None:
    """Make the manifest in trainer_state.json describe the files as they are now."""
    import hashlib

    state_file = folder / "trainer_state.json"
    state = json.loads(state_file.read_text())
    for name, entry in state["files"].items():
        content = (folder / name).read_bytes()
        entry.update(size=len(content), sha256=hashlib.sha256(content).hexdigest())
    state_file.write_text(json.dumps(state))


def test_an_explicitly_chosen_damaged_checkpoint_is_refused(
    five_checkpoints, shakespeare_char, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(five_checkpoints, out)
    chosen = checkpoint(out, 3)
    truncate(chosen / "optimizer.bin", tmp_path)
    result = run_python(
        *train_args(
            shakespeare_char, out, *FIVE_CHECKPOINTS, "train.max_iters=6", f"train.resume={chosen}"
        )
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"error: train.resume={chosen}: the checkpoint is damaged (optimizer.bin"
    )
    assert not list((out / "checkpoints").glob("damaged-*"))  # nothing moved: the user chose it


def test_with_no_intact_checkpoint_left_the_run_stops_and_suggests_starting_over(
    five_checkpoints, shakespeare_char, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(five_checkpoints, out)
    for step in range(1, 6):
        empty(checkpoint(out, step) / "trainer_state.json", tmp_path)
    result = run_python(*train_args(shakespeare_char, out, *FIVE_CHECKPOINTS))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"no intact checkpoint in {out / 'checkpoints'}" in result.stderr
    assert "train.resume=never" in result.stderr
    assert len(list((out / "checkpoints").glob("damaged-step_*"))) == 5


@pytest.mark.parametrize(
    "failure",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        KeyError("a key of another accelerate version"),
    ],
)
def test_a_load_that_fails_for_another_reason_stops_and_leaves_the_checkpoint(
    failure, five_checkpoints, tmp_path, fresh_accelerate_state
):
    """Out of memory, say: the checkpoint's files are as written, so it is not set aside."""
    from gpt.base.errors import UserError
    from gpt.training.resume import resume

    out = tmp_path / "run"
    shutil.copytree(five_checkpoints, out)

    def restore(checkpoint: Path) -> None:
        raise failure

    with pytest.raises(UserError) as refused:
        resume(Accelerator(cpu=True), "auto", out, lambda checkpoint: None, restore)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {checkpoint(out, 5)} could not be loaded (")
    assert type(failure).__name__ in message and "it is left as it is" in message
    assert checkpoint(out, 5).is_dir() and not list((out / "checkpoints").glob("damaged-*"))
