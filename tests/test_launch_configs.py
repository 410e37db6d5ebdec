"""The shipped ``accelerate launch`` configs start the processes they promise.

Each config is read by accelerate's own launch parser (which launcher, how many processes) and, where
this machine allows, launched for real with tests/launch_probe.py, which reports the distributed
type and the process count each process sees. On a machine without GPUs the GPU configs are launched
with ``--num_processes 2``, which accelerate runs as two CPU processes over gloo; their real GPU
launches need at least two GPUs and are skipped elsewhere. Launches the trainer must refuse on this
machine (accelerate's FSDP, several processes asked of the single-process launcher) are launched with
train.py itself.
"""

from __future__ import annotations

import json

import pytest
import torch

from gpt.base.config import TrainConfig, load_config
from gpt.training.launch import runs_on_cpu
from tests.conftest import ROOT, start_python
from tests.test_trainer import free_port, train_args
from tests.warm_python import Process

CONFIGS = ROOT / "configs" / "accelerate"
PROBE = "tests/launch_probe.py"
ENV = {"OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
GPUS = torch.cuda.device_count()
needs_no_gpu = pytest.mark.skipif(
    GPUS > 0, reason="shows the CPU fallback of a machine without GPUs"
)


def needs_two_gpus(test):
    return pytest.mark.gpu(pytest.mark.skipif(GPUS < 2, reason="needs 2 CUDA GPUs")(test))


def launch(*args: str, env: dict | None = None) -> Process:
    """``accelerate launch ARGS`` in the background, its output captured as text."""
    return start_python("-m", "accelerate.commands.launch", *args, env={**ENV, **(env or {})})


def finish(process: Process) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=300)
    return process.returncode, stdout, stderr


def probe_reports(*args: str, probe_args: tuple[str, ...] = ()) -> list[dict]:
    """Launch the probe; return what each process reported, ordered by process index."""
    code, stdout, stderr = finish(launch(*args, PROBE, *probe_args))
    assert code == 0, stderr[-3000:]
    return reports_in(stdout)


def reports_in(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    assert all(line.startswith("probe ") for line in lines), stdout
    reports = [json.loads(line.removeprefix("probe ")) for line in lines]
    return sorted(reports, key=lambda report: report["process"])


def parsed(*flags: str):
    """What ``accelerate launch FLAGS train.py`` would do, from accelerate's own parser and checks."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args([*flags, "train.py"])
    return _validate_launch_command(args)[0]


def config(name: str) -> str:
    return str(CONFIGS / name)


# ----- what accelerate makes of each config --------------------------------------------------------


def test_every_shipped_config_is_tested_here():
    assert sorted(path.name for path in CONFIGS.glob("*.yaml")) == [
        "cpu_ddp_2proc.yaml", "multi_gpu.yaml", "multi_node.yaml",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "launcher", "processes", "machines"),
    [
        ("cpu_ddp_2proc.yaml", "multi_gpu", 2, 1),  # torchrun's launcher: it starts the processes
        ("multi_gpu.yaml", "multi_gpu", 8, 1),
        ("multi_node.yaml", "multi_gpu", 16, 2),
    ],
)
def test_accelerate_reads_each_config_as_promised(name, launcher, processes, machines):
    args = parsed("--config_file", config(name))
    assert getattr(args, launcher) is True
    assert (args.num_processes, args.num_machines) == (processes, machines)


# ----- real launches on this machine --------------------------------------------------------------


def two_cpu_processes(device: str = "cpu") -> list[dict]:
    return [
        {"distributed_type": "MULTI_CPU", "device": device, "process": rank, "processes": 2}
        for rank in (0, 1)
    ]


@pytest.mark.parametrize(
    "launch_flags",
    [("--config_file", config("cpu_ddp_2proc.yaml")), ("--multi_gpu", "--num_processes", "2")],
    ids=["cpu config", "--multi_gpu"],
)
def test_train_cpu_starts_two_gloo_processes_on_a_machine_with_gpus(launch_flags):
    """train.cpu=true, not accelerate's gpu_ids (whose export changed in accelerate 1.16), keeps
    the processes on the CPU: with GPUs visible, nothing touches CUDA (the pretence would fail).
    Without GPUs, every two-process test of the suite starts them so."""
    reports = probe_reports(
        *launch_flags, "--main_process_port", "0", probe_args=("--cpu", "--pretend-gpus")
    )
    assert reports == two_cpu_processes()


def test_the_cpu_training_config_pins_the_cpu():
    """The config the CPU launch is documented with needs no train.cpu=true on the command line."""
    assert load_config(ROOT / "configs" / "shakespeare_char_cpu.yaml").train.cpu is True


def test_without_train_cpu_a_machine_with_gpus_trains_on_them(monkeypatch):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    assert runs_on_cpu(TrainConfig()) is False
    assert runs_on_cpu(TrainConfig(cpu=True)) is True


@needs_no_gpu
def test_a_gpu_config_with_two_processes_falls_back_to_gloo_on_cpus():
    reports = probe_reports(
        "--config_file", config("multi_gpu.yaml"), "--num_processes", "2",
        "--main_process_port", "0",
    )  # fmt: skip
    assert reports == two_cpu_processes()


@needs_no_gpu
def test_the_multi_node_config_joins_two_machines_over_loopback():
    port = str(free_port())
    machines = [
        launch(
            "--config_file",
            config("multi_node.yaml"),
            "--num_processes",
            "2",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
            PROBE,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    reports = []
    for machine in machines:
        code, stdout, stderr = finish(machine)
        assert code == 0, stderr[-3000:]
        reports += reports_in(stdout)
    assert reports == two_cpu_processes()


@pytest.mark.slow
def test_train_py_runs_as_two_processes_under_the_cpu_config(shakespeare_char, tmp_path):
    out = tmp_path / "out"
    overrides = ("train.max_iters=4", "train.warmup_iters=2", "train.eval_interval=4")
    code, stdout, stderr = finish(
        launch(
            "--config_file",
            config("cpu_ddp_2proc.yaml"),
            "--main_process_port",
            "0",
            *train_args(shakespeare_char, out, *overrides),
        )  # fmt: skip
    )
    assert code == 0, stderr[-3000:]
    assert stdout.count("device     cpu, 2 processes\n") == 1  # said once, by the main process
    (checkpoint,) = (out / "checkpoints").iterdir()
    # accelerate saves the random number generators of every process: one file each
    assert sorted(path.name for path in checkpoint.glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]


@needs_no_gpu
def test_several_processes_asked_of_the_single_process_launcher_is_one_line(
    shakespeare_char, tmp_path
):
    """The launcher would print a CalledProcessError traceback under the trainer's refusal: the
    trainer asks it to stop first, so that the one line is all there is."""
    out = tmp_path / "out"
    flags = ("--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no")
    flags += ("--dynamo_backend", "no", "--main_process_port", "0")  # all given: no warning
    code, stdout, stderr = finish(launch(*flags, *train_args(shakespeare_char, out)))
    assert code != 0  # 143: the launcher stopped on the trainer's request
    assert stderr.splitlines() == [
        "error: accelerate launch was asked for several processes but started this one process "
        "alone (--num_processes or --num_machines without --multi_gpu, or a MULTI_CPU config "
        "without mpirun); launch with --multi_gpu --num_processes N, on CPUs too, or with "
        "--config_file configs/accelerate/cpu_ddp_2proc.yaml"
    ]
    assert stdout == "" and not out.exists()


# ----- real launches on GPUs -----------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(GPUS < 1, reason="needs a CUDA GPU")
def test_the_cpu_config_stays_on_the_cpu_where_there_are_gpus():
    reports = probe_reports(
        "--config_file", config("cpu_ddp_2proc.yaml"), "--main_process_port", "0",
        probe_args=("--cpu",),
    )  # fmt: skip
    assert reports == two_cpu_processes()


@needs_two_gpus
def test_the_gpu_config_starts_one_process_per_gpu():
    processes = min(GPUS, 8)
    reports = probe_reports(
        "--config_file", config("multi_gpu.yaml"), "--num_processes", str(processes),
        "--main_process_port", "0",
    )  # fmt: skip
    assert reports == [
        {"distributed_type": "MULTI_GPU", "device": "cuda", "process": rank,
         "processes": processes}
        for rank in range(processes)
    ]  # fmt: skip


@needs_two_gpus
def test_the_multi_node_config_joins_two_machines_of_one_gpu_each():
    port = str(free_port())
    machines = [
        launch(
            "--config_file",
            config("multi_node.yaml"),
            "--num_processes",
            "2",
            "--gpu_ids",
            str(rank),
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
            PROBE,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    reports = []
    for machine in machines:
        code, stdout, stderr = finish(machine)
        assert code == 0, stderr[-3000:]
        reports += reports_in(stdout)
    assert sorted(reports, key=lambda report: report["process"]) == [
        {"distributed_type": "MULTI_GPU", "device": "cuda", "process": rank, "processes": 2}
        for rank in (0, 1)
    ]
