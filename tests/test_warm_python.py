"""A command forked from the warm interpreter (tests/warm_python.py) is what ``python ARGS`` is: the
same exit code, output, folder and environment, whatever way it ends."""

import os
import signal
import subprocess
import sys

import pytest

from tests.warm_python import WARM, WarmProcess

from .conftest import ROOT, run_python, start_python

ENDINGS = {
    "exit code": ("import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)", 3),
    "message": ("raise SystemExit('goodbye')", 1),
    "exception": ("raise ValueError('no')", 1),
    "Ctrl-C": ("raise KeyboardInterrupt", -signal.SIGINT),
    "thread and atexit": (
        "import atexit, threading, time\n"
        "atexit.register(lambda: print('atexit'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()",
        0,
    ),
}


def cold(*args: str, cwd=ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, *args]
    env = {**os.environ, **(env or {})}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_command_ends_as_in_a_fresh_interpreter(ending):
    code, returncode = ENDINGS[ending]
    warm, fresh = run_python("-c", code), cold("-c", code)
    assert (warm.returncode, warm.stdout, warm.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )
    assert warm.returncode == returncode


def test_scripts_and_modules_see_their_arguments_folder_and_environment(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import os, sys\n"
        "print(sys.argv[1:], os.getcwd(), os.environ['SHOWN'], sys.path[0])\n"
        "print(__name__)\n"
    )
    for args in (
        [str(script), "a", "b"],
        ["-c", script.read_text(), "a", "b"],
        ["-m", "show", "a", "b"],
    ):
        warm = run_python(*args, cwd=tmp_path, env={"SHOWN": "yes"})
        fresh = cold(*args, cwd=tmp_path, env={"SHOWN": "yes"})
        assert warm.stdout == fresh.stdout, args
    assert "__main__" in warm.stdout


def test_the_project_commands_answer_as_in_a_fresh_interpreter():
    for args in (["train.py", "--help"], ["-m", "gpt.evaluate", "nowhere"], ["sample.py"]):
        warm, fresh = run_python(*args), cold(*args)
        assert (warm.returncode, warm.stdout, warm.stderr) == (
            fresh.returncode,
            fresh.stdout,
            fresh.stderr,
        ), args


def test_a_started_command_is_signalled_waited_for_and_timed_out():
    process = start_python("-c", "import time; print('started', flush=True); time.sleep(60)")
    assert isinstance(process, WarmProcess)
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == -signal.SIGTERM
    assert process.communicate() == ("started\n", "")
    with pytest.raises(subprocess.TimeoutExpired):
        run_python("-c", "import time; time.sleep(60)", timeout=0.5)


def test_an_environment_read_at_start_up_gets_a_fresh_interpreter():
    assert isinstance(start_python("-c", "pass"), WarmProcess)
    fresh = start_python("-c", "pass", env={"PYTHONHASHSEED": "123"})
    assert isinstance(fresh, subprocess.Popen)
    assert fresh.wait(timeout=60) == 0
    assert WARM.children_cpu_seconds > 0


def test_accelerate_launches_fork_but_for_the_single_process_launcher(tmp_path):
    """The trainer asks a single-process launcher, which it tells by its command line, to stop
    quietly: that launcher starts fresh; torchrun's (--multi_gpu, --use_fsdp, or a config of
    type MULTI_GPU) is forked."""
    launch = ["-m", "accelerate.commands.launch", "--num_processes", "2"]
    multi_cpu = tmp_path / "multi_cpu.yaml"
    multi_cpu.write_text("distributed_type: MULTI_CPU\n")
    configs = ROOT / "configs" / "accelerate"
    environment = dict(os.environ)
    for single in ([], ["--config_file", str(multi_cpu)]):
        assert not WARM._can_fork([*launch, *single, "train.py"], ROOT, environment)
    for torchrun in (
        ["--multi_gpu"],
        ["--use_fsdp"],
        ["--config_file", configs / "multi_gpu.yaml"],
    ):
        assert WARM._can_fork([*launch, *map(str, torchrun), "train.py"], ROOT, environment)
