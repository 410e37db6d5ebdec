"""FSDP (``train.fsdp=true``) on two CPU processes over gloo: the code path GPUs run.

One tiny sharded run (two processes, four steps, checkpoints at steps 2 and 4) is the reference;
each test checks one promise against it: the checkpoint holds every process's shards and its
manifest covers them, the best weights are gathered into one file that loads into an unsharded
model, a run killed while it saves resumes from the last complete checkpoint to the same weights,
bit for bit, and ``train.init_from`` is read by the main process alone. A run with gradient
accumulation reduce-scatters once per optimizer step and matches the same run under DDP.
"""

import shutil
from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp
from safetensors import safe_open
from safetensors.torch import load_file

from bench.fault_runs import free_port
from gpt.base.cli import run_cli
from gpt.base.errors import UserError
from gpt.export import _main as export_main
from gpt.models.gpt import build_model
from gpt.run.checkpoints import find_damage, saved_model_config
from gpt.run.folder import list_checkpoints
from gpt.run.weights import load_trained
from gpt.training.checkpoint import check_sharding

from .conftest import ROOT, run_python
from .test_faults import SLOW_SAVES, kill_with_children, started, wait_for
from .test_trainer import accelerate_launch, assert_same_weights, read_metrics, train_args

SHARDED = [
    "train.fsdp=true",
    "train.batch_size=4",  # per process
    "train.max_iters=4",
    "train.eval_interval=2",
    "train.checkpoint_interval=2",
]
COUNT_CALLS = str(ROOT / "tests" / "count_calls.py")


def sharded_command(data: Path, out: Path, *overrides: str, wrapper: tuple[str, ...] = ()):
    """``accelerate launch`` of two CPU processes training sharded; ``wrapper``: a helper script
    (and its arguments) that runs train.py in each process."""
    launch = accelerate_launch(machines=1, machine_rank=0, port=free_port())
    return [*launch, *wrapper, *train_args(data, out, *SHARDED, *overrides)]


@pytest.fixture(scope="module")
def sharded_run(shakespeare_char, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sharded") / "run"
    result = run_python(*sharded_command(shakespeare_char, out))
    assert result.returncode == 0, result.stderr
    return out


def test_a_sharded_checkpoint_holds_every_process_shards_under_its_manifest(sharded_run, tmp_path):
    checkpoint = tmp_path / "step_0000004"
    shutil.copytree(list_checkpoints(sharded_run)[-1], checkpoint)
    files = sorted(path.relative_to(checkpoint).as_posix() for path in checkpoint.rglob("*"))
    assert files == [
        "random_states_0.pkl",
        "random_states_1.pkl",
        "sharded",
        "sharded/.metadata",
        "sharded/__0_0.distcp",
        "sharded/__1_0.distcp",
        "trainer_state.json",
    ]  # no unsharded model.safetensors or optimizer.bin: each process wrote its own part
    assert find_damage(checkpoint) is None
    shard = checkpoint / "sharded" / "__1_0.distcp"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2] ^= 1
    shard.write_bytes(bytes(content))
    assert find_damage(checkpoint) == (
        "sharded/__1_0.distcp is not the file that was written (its SHA-256 differs)"
    )


def test_a_sharded_checkpoint_resumes_sharded_only_and_is_not_sampled(sharded_run):
    """Without train.fsdp=true the trainer would find no model state in it: it refuses first.
    Sampling and evaluation, which read one weights file, point to the run's best weights."""
    checkpoint = list_checkpoints(sharded_run)[-1]
    with pytest.raises(UserError, match=f"use the run's best weights \\({sharded_run}\\)"):
        load_trained(checkpoint)
    check_sharding(checkpoint, sharded=True)
    with pytest.raises(
        UserError, match=r"saved with train.fsdp=true; resume it with train.fsdp=true"
    ):
        check_sharding(checkpoint, sharded=False)


def test_the_best_weights_are_gathered_into_one_file_that_loads_unsharded(sharded_run):
    """The gathered weights are those of the sharded checkpoint of the same step, whole."""
    model, _ = load_trained(sharded_run)  # verified against its digest and the tokenizer
    checkpoint = list_checkpoints(sharded_run)[-1]
    assert read_metrics(sharded_run)[-1]["best_val_loss"] == min(
        record["val_loss"] for record in read_metrics(sharded_run) if record["kind"] == "eval"
    )
    sharded = {"model": build_model(saved_model_config(checkpoint)).state_dict()}
    dcp.load(sharded, checkpoint_id=checkpoint / "sharded", no_dist=True)  # whole, here
    assert_same_weights(model.state_dict(), sharded["model"])
    with safe_open(str(sharded_run / "model.safetensors"), "pt") as weights:
        stored, metadata = set(weights.keys()), weights.metadata()
    assert metadata["step"] == "4"
    assert len(stored) < len(model.state_dict())  # the tied embedding and head stored once
    assert model.lm_head.weight is model.token_embedding.weight


@pytest.mark.slow
def test_a_run_killed_while_it_saves_resumes_from_the_last_complete_checkpoint_exactly(
    sharded_run, shakespeare_char, tmp_path
):
    """SIGKILL of every process while the shards of step 4 are written (torch.distributed.checkpoint
    writes each tensor with torch.save, slowed down here); the same command then resumes from
    step 2 and ends with the weights of the uninterrupted run, bit for bit."""
    out = tmp_path / "run"
    slowly = (SLOW_SAVES, "0.05", "all")
    unfinished = out / "checkpoints" / ".step_0000004.tmp"
    with started(sharded_command(shakespeare_char, out, wrapper=slowly), out) as launcher:
        wait_for(lambda: (unfinished / "sharded" / "__1_0.distcp").exists(), [launcher])
        kill_with_children(launcher)
    assert not (unfinished / "sharded" / ".metadata").exists()  # written last, once all is
    assert [path.name for path in list_checkpoints(out)] == ["step_0000002"]
    assert unfinished.is_dir()

    result = run_python(*sharded_command(shakespeare_char, out))
    assert result.returncode == 0, result.stderr
    assert f"resumed from {out / 'checkpoints' / 'step_0000002'} at step 2" in result.stdout
    assert_same_weights(
        load_file(out / "model.safetensors"), load_file(sharded_run / "model.safetensors")
    )
    losses = [record.get("loss") for record in read_metrics(out)]
    assert losses == [record.get("loss") for record in read_metrics(sharded_run)]


@pytest.mark.slow
def test_init_from_is_read_by_the_main_process_alone_and_reaches_every_shard(
    sharded_run, shakespeare_char, tmp_path
):
    """The other process builds its model without memory and receives its shards: the first
    evaluation of the pretrained weights is the one of the run they come from."""
    pretrained = tmp_path / "pretrained"
    assert run_cli(export_main, [str(sharded_run), "--to", "hf", str(pretrained)]) == 0
    calls, out = tmp_path / "calls.log", tmp_path / "finetuned"
    counting = (COUNT_CALLS, str(calls), "gpt.interop.pretrained", "load_pretrained")
    command = sharded_command(
        shakespeare_char, out, f"train.init_from={pretrained}", "train.max_iters=1",
        "model.bias=true",  # a GPT-2 folder has biases (the exported ones are zeros)
        wrapper=counting,
    )  # fmt: skip
    result = run_python(*command)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["0"]
    first = read_metrics(out)[0]
    assert first["kind"] == "eval" and first["step"] == 0
    best_val_loss = read_metrics(sharded_run)[-1]["best_val_loss"]
    assert first["val_loss"] == pytest.approx(best_val_loss, rel=1e-6)


@pytest.mark.slow
def test_accumulated_gradients_are_reduce_scattered_once_per_step_as_ddp_would(
    shakespeare_char, tmp_path
):
    """With train.gradient_accumulation_steps=2 each FSDP unit (2 blocks, then the whole model)
    reduce-scatters its gradients once per optimizer step, not once per micro-step (FSDP2's
    ``set_requires_gradient_sync``, as DDP's ``no_sync``), and the run trains as the same 8
    windows a step do unsharded in one process (which, split so, trains as two processes do:
    tests/test_trainer.py): the same loss and weights, up to the order of float32 sums."""
    accumulated = ["train.gradient_accumulation_steps=2", "train.batch_size=2"]  # 8 windows a step
    calls, sharded, unsharded = tmp_path / "calls.log", tmp_path / "sharded", tmp_path / "one"
    counting = (COUNT_CALLS, str(calls), "torch.distributed", "reduce_scatter_single")
    command = sharded_command(shakespeare_char, sharded, *accumulated, wrapper=counting)
    result = run_python(*command)
    assert result.returncode == 0, result.stderr
    units, steps = 2 + 1, 4
    ranks = calls.read_text().splitlines()
    assert (ranks.count("0"), ranks.count("1")) == (units * steps, units * steps)

    one_process = ["train.gradient_accumulation_steps=4", "train.batch_size=2"]
    one_process += ["train.eval_iters=8"]  # the 8 x 2 windows that 2 processes evaluate
    command = train_args(shakespeare_char, unsharded, *SHARDED, "train.fsdp=false", *one_process)
    result = run_python(*command)
    assert result.returncode == 0, result.stderr
    losses = {
        out: [r["loss"] for r in read_metrics(out) if "loss" in r] for out in (sharded, unsharded)
    }
    assert losses[sharded] == pytest.approx(losses[unsharded], rel=1e-6)
    assert_same_weights(
        load_file(sharded / "model.safetensors"), load_file(unsharded / "model.safetensors"), 1e-6
    )


def test_one_process_shards_too(shakespeare_char, tmp_path):
    """``python train.py`` (one GPU, say) forms a process group of one for FSDP."""
    out = tmp_path / "run"
    result = run_python(*train_args(shakespeare_char, out, *SHARDED, "train.max_iters=2"))
    assert result.returncode == 0, result.stderr
    assert (list_checkpoints(out)[-1] / "sharded" / "__0_0.distcp").is_file()
    load_trained(out)


def test_the_trainer_imports_fsdp_only_when_it_shards():
    """FSDP's modules take over a second to import: unsharded runs never pay for them."""
    check = "import sys, gpt.training.trainer; print('torch.distributed.fsdp' in sys.modules)"
    result = run_python("-c", check, env={"WARM_PYTHON": "0"})  # a fresh interpreter's imports
    assert result.stdout.strip() == "False", result.stderr
