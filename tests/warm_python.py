"""The suite's commands run in forked copies of an interpreter that has already imported torch.

A ``python train.py ...`` spends about 3.5 s of CPU importing torch, torch._dynamo (which
torch.optim imports at its first step), accelerate and matplotlib before it does any work, and the
suite runs a few hundred such commands. So each test process keeps one *warm* interpreter
(``python -m tests.warm_python``): it imports those modules and the project's commands, runs
nothing else, and forks a child for every command. The child is what ``python ARGS`` would be once
its imports are done: the same arguments, working folder and environment, stdin empty, stdout and
stderr captured, the same exit code (a traceback and 1 for an uncaught exception, death by SIGINT
for an uncaught KeyboardInterrupt), threads joined and atexit handlers run at the end.

What a fork cannot reproduce runs cold, in a fresh interpreter: an environment that changes what is
read at start-up (``PYTHON*``, ``TORCH*``, thread counts, ``LD_*``: see ``STARTUP_PREFIXES``), a
command line other than ``SCRIPT ...``, ``-m MODULE ...`` or ``-c CODE ...``, accelerate's launcher
but with ``--multi_gpu`` (a forked process keeps its parent's command line, and the trainer tells
a single-process launcher by its command line, to ask it to stop quietly; a ``--multi_gpu`` launch
is torchrun's, never one to ask), and everything when ``WARM_PYTHON=0`` (in the environment, or in
a command's: what a fresh interpreter imports is seen only in one). Commands are started and
signalled too (:meth:`WarmPython.start` gives what tests use of a ``subprocess.Popen``).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import queue
import runpy
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from subprocess import PIPE

import yaml

ROOT = Path(__file__).resolve().parents[1]
PRELOADED = (
    "torch",
    "torch._dynamo",
    "torch.optim",
    "accelerate",
    "accelerate.commands.launch",
    "matplotlib",
    "gpt.train_cli",
    "gpt.sample_cli",
    "gpt.evaluate",
    "gpt.report",
)
# Variables read when an interpreter (or a preloaded module) starts, not when a command runs.
STARTUP_PREFIXES = ("PYTHON", "TORCH", "OMP_", "MKL_", "KMP_", "MPL", "LD_")
# ... but for one that torch writes into the environment of a process that compiles (its default
# cache folder): a test process that compiled in-process has it, and changed nothing by it.
SET_BY_TORCH = ("TORCHINDUCTOR_CACHE_DIR",)


# ----- the test process's side --------------------------------------------------------------------


def is_single_process_launcher(args: list[str], cwd: Path) -> bool:
    """``-m accelerate.commands.launch ...`` that is not torchrun's (``--multi_gpu``,
    ``--use_fsdp``, or a ``--config_file`` of type MULTI_GPU or FSDP): the launcher that may start
    one process where several were asked for (see the module's docstring)."""
    if args[:2] != ["-m", "accelerate.commands.launch"]:
        return False
    if "--multi_gpu" in args or "--use_fsdp" in args:
        return False
    if "--config_file" in args:
        config = yaml.safe_load((cwd / args[args.index("--config_file") + 1]).read_text())
        return config.get("distributed_type") not in ("MULTI_GPU", "FSDP")
    return True


class WarmProcess:
    """A command forked from the warm interpreter: what tests use of ``subprocess.Popen``.

    Its stdout and stderr are files, read by :meth:`communicate` once it has ended; the warm
    interpreter, its parent, says when it ends and with which exit code."""

    def __init__(
        self,
        warm: WarmPython,
        pid: int,
        args: list[str],
        streams: tuple[Path, Path],
        owns_streams: bool,
    ):
        self.warm, self.pid, self.args, self.streams = warm, pid, args, streams
        self.owns_streams = owns_streams  # files of its own, removed once read
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(timeout=0) if self.returncode is None else self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.warm.exit_code(self, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Its stdout and stderr, once it has ended (empty at a second call, as for a Popen)."""
        self.wait(timeout)
        texts = tuple(path.read_text() if path.exists() else "" for path in self.streams)
        for path in self.streams if self.owns_streams else ():
            path.unlink(missing_ok=True)
        return texts

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class WarmPython:
    """One warm interpreter, started on first use."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.started_with: dict[str, str] = {}
        self.streams = Path()  # a temporary folder for the commands' output, once started
        self.requests = threading.Lock()
        self.pids: queue.Queue[int] = queue.Queue()  # of the children forked, in request order
        self.endings: dict[int, dict] = {}  # pid -> exit code and CPU time, once ended
        self.ended = threading.Condition()
        # CPU time of the commands run warm, which this process never waits for itself
        self.children_cpu_seconds = 0.0

    def run(
        self, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        """``subprocess.run([sys.executable, *args], capture_output=True, text=True, ...)``."""
        process = self.start(args, cwd, env)
        try:
            stdout, stderr = process.communicate(timeout)
        except subprocess.TimeoutExpired as expired:  # as subprocess.run does: kill, wait, raise
            process.kill()
            expired.output, expired.stderr = process.communicate()
            raise
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def start(
        self,
        args: list[str],
        cwd: Path,
        env: dict[str, str],
        output: tuple[Path, Path] | None = None,
    ) -> Process:
        """``python ARGS`` started with its stdout and stderr captured as text, or written to the
        two files of ``output``: forked where it can be, else a ``subprocess.Popen``."""
        command = [sys.executable, *args]
        if not self._can_fork(args, Path(cwd), env):
            if output is None:
                return subprocess.Popen(
                    command, cwd=cwd, env=env, stdout=PIPE, stderr=PIPE, text=True
                )
            with open(output[0], "w") as stdout, open(output[1], "w") as stderr:
                return subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)
        with self.requests:
            self._start()
            streams = output or (self._new_file(".stdout"), self._new_file(".stderr"))
            request = {"args": args, "cwd": str(cwd), "env": env}
            self._send(request | {"stdout": str(streams[0]), "stderr": str(streams[1])})
            pid = self.pids.get(timeout=60)
        return WarmProcess(self, pid, command, streams, owns_streams=output is None)

    def _new_file(self, suffix: str) -> Path:
        descriptor, path = tempfile.mkstemp(dir=self.streams, suffix=suffix)
        os.close(descriptor)
        return Path(path)

    def exit_code(self, process: WarmProcess, timeout: float | None) -> int | None:
        """``process``'s exit code once it has ended; None if ``timeout`` is 0 and it runs on,
        subprocess.TimeoutExpired after any other ``timeout``."""
        with self.ended:
            if not self.ended.wait_for(lambda: process.pid in self.endings, timeout):
                if timeout == 0:
                    return None
                raise subprocess.TimeoutExpired(process.args, timeout)
            ending = self.endings.pop(process.pid)
        self.children_cpu_seconds += ending["cpu"]
        return ending["returncode"]

    def _can_fork(self, args: list[str], cwd: Path, env: dict[str, str]) -> bool:
        if env.get("WARM_PYTHON") == "0" or not args:
            return False
        if args[0] in ("-m", "-c"):
            if len(args) < 2 or is_single_process_launcher(args, cwd):
                return False
        elif args[0].startswith("-"):
            return False
        started_with = self.started_with if self.process is not None else os.environ
        return all(
            env.get(key) == started_with.get(key)
            for key in set(env) | set(started_with)
            if key.startswith(STARTUP_PREFIXES) and key not in SET_BY_TORCH
        )

    def _start(self) -> None:
        """Start the warm interpreter with this process's environment, unless it is running."""
        if self.process is not None:
            return
        self.started_with = dict(os.environ)
        self.streams = Path(tempfile.mkdtemp(prefix="warm-python-"))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_python"],
            cwd=ROOT,
            env=self.started_with,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout.readline() == "ready\n", "the warm interpreter did not start"
        threading.Thread(target=self._read_replies, daemon=True).start()
        atexit.register(self.stop)

    def stop(self) -> None:
        """Close the warm interpreter's input, which ends it and kills any child left (it is
        waited for, so that its children's CPU time counts in this process's)."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.streams, ignore_errors=True)

    def _send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def _read_replies(self) -> None:
        for line in self.process.stdout:
            reply = json.loads(line)
            if "returncode" not in reply:
                self.pids.put(reply["pid"])
                continue
            with self.ended:
                self.endings[reply["pid"]] = reply
                self.ended.notify_all()


Process = WarmProcess | subprocess.Popen
WARM = WarmPython()


# ----- the warm interpreter's side ----------------------------------------------------------------


def serve() -> None:
    """Import, then fork a child for each request on stdin; reply with its pid at once, and with
    its exit code and CPU time when it ends. At the end of stdin, kill the children left.

    Replies go to a copy of stdout, and stdout itself to stderr, so that nothing an import prints
    can be taken for a reply."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for module in PRELOADED:
        __import__(module)
    warm_up()
    print("ready", file=replies, flush=True)
    children: set[int] = set()
    requests = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05 if children else None)
        if readable:
            received = os.read(0, 1 << 16)
            if not received:
                break
            requests += received
            while b"\n" in requests:
                line, requests = requests.split(b"\n", 1)
                pid = os.fork()
                if pid == 0:
                    replies.close()
                    run_child(json.loads(line))
                children.add(pid)
                reply(replies, {"pid": pid})
        reap(children, replies)
    for pid in children:
        os.kill(pid, signal.SIGKILL)


def warm_up() -> None:
    """Do here, once for every child, what each command would do the first time: matplotlib's
    first figure loads its fonts (a third of a second a report). Nothing here may run torch's
    parallel operations: a child forked after OpenMP's threads have started hangs in its own.

    Then everything imported is frozen out of the garbage collector's sight: a child's collections
    (train.py's own at its end, automatic ones) walk the objects it made, not the whole of torch."""
    from gpt.analysis.figures import new_figure, save_png

    figure, (ax,) = new_figure()
    ax.plot([0, 1], [1, 0], label="a line")
    ax.set(xlabel="step", ylabel="loss", title="warm-up")
    ax.legend()
    with tempfile.TemporaryDirectory() as folder:
        save_png(figure, Path(folder) / "warm-up.png")
    gc.collect()
    gc.freeze()


def reap(children: set[int], replies) -> None:
    """Reply for each child that has ended."""
    while children:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
        if pid == 0:
            return
        children.discard(pid)
        cpu_seconds = usage.ru_utime + usage.ru_stime
        reply(
            replies,
            {"pid": pid, "returncode": os.waitstatus_to_exitcode(status), "cpu": cpu_seconds},
        )


def reply(replies, message: dict) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()


def run_child(request: dict) -> None:
    """Become ``python ARGS`` in the request's folder, environment and streams; never returns."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    redirect(0, os.devnull, os.O_RDONLY)
    redirect(1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    redirect(2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    code = exit_code_of(request["args"])
    threading._shutdown()  # what the interpreter does at exit: join threads, then atexit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def redirect(fd: int, path: str, flags: int) -> None:
    opened = os.open(path, flags, 0o600)
    os.dup2(opened, fd)
    os.close(opened)


def exit_code_of(args: list[str]) -> int:
    """Run the command as the interpreter would run it; its exit code."""
    try:
        if args[0] == "-m":
            sys.argv = ["-m", *args[2:]]
            sys.path[0] = os.getcwd()
            sys.modules.pop(args[1], None)  # preloaded: the interpreter would not have it yet
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        elif args[0] == "-c":
            sys.argv = ["-c", *args[2:]]
            sys.path[0] = ""
            exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
        else:
            sys.argv = list(args)
            sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
            runpy.run_path(args[0], run_name="__main__")
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # the interpreter prints it, then dies by SIGINT
        print_uncaught(interrupt)
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException as error:
        print_uncaught(error)
        return 1
    return 0


def print_uncaught(error: BaseException) -> None:
    """The traceback the interpreter prints, from the command's first frame (not this file's)."""
    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>"):
        frames = frames.tb_next
    sys.excepthook(type(error), error.with_traceback(frames), frames)


if __name__ == "__main__":
    serve()
