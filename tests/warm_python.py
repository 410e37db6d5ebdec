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
command line other than ``SCRIPT ...``, ``-m MODULE ...`` or ``-c CODE ...``, and everything when
``WARM_PYTHON=0``. Tests that signal a command, or watch it while it runs, start it themselves.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOADED = (
    "torch",
    "torch._dynamo",
    "torch.optim",
    "accelerate",
    "matplotlib",
    "gpt.train_cli",
    "gpt.sample_cli",
    "gpt.evaluate",
    "gpt.report",
)
# Variables read when an interpreter (or a preloaded module) starts, not when a command runs.
STARTUP_PREFIXES = ("PYTHON", "TORCH", "OMP_", "MKL_", "KMP_", "MPL", "LD_")


# ----- the test process's side --------------------------------------------------------------------


class WarmPython:
    """One warm interpreter, started on first use; ``run`` is ``subprocess.run`` with
    ``capture_output=True, text=True`` for ``[sys.executable, *args]``."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.started_with: dict[str, str] = {}
        self.streams = Path(tempfile.mkdtemp(prefix="warm-python-"))
        self.lock = threading.Lock()
        self.children_cpu_seconds = 0.0  # of the commands run warm, which this process never waits for

    def run(
        self, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        command = [sys.executable, *args]
        if not self._can_fork(args, env):
            return subprocess.run(
                command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
            )
        with self.lock:
            self._start()
            stdout, stderr = self.streams / "stdout", self.streams / "stderr"
            request = {"args": args, "cwd": str(cwd), "env": env}
            request |= {"stdout": str(stdout), "stderr": str(stderr)}
            self._send(request)
            pid = self._receive(timeout=60)["pid"]
            reply = self._receive(timeout)
            if reply is None:  # as subprocess.run does: kill, wait, raise
                os.kill(pid, signal.SIGKILL)
                self._receive(timeout=60)
                raise subprocess.TimeoutExpired(
                    command, timeout, output=stdout.read_text(), stderr=stderr.read_text()
                )
            self.children_cpu_seconds += reply["cpu"]
            return subprocess.CompletedProcess(
                command, reply["returncode"], stdout.read_text(), stderr.read_text()
            )

    def _can_fork(self, args: list[str], env: dict[str, str]) -> bool:
        if os.environ.get("WARM_PYTHON") == "0" or not args:
            return False
        if args[0] in ("-m", "-c"):
            if len(args) < 2:
                return False
        elif args[0].startswith("-"):
            return False
        started_with = self.started_with if self.process is not None else os.environ
        return all(
            env.get(key) == started_with.get(key)
            for key in set(env) | set(started_with)
            if key.startswith(STARTUP_PREFIXES)
        )

    def _start(self) -> None:
        """Start the warm interpreter with this process's environment, unless it is running."""
        if self.process is not None and self.process.poll() is None:
            return
        self.started_with = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.warm_python"],
            cwd=ROOT,
            env=self.started_with,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        atexit.register(self.stop)
        assert self._receive(timeout=120) == {"ready": True}, "the warm interpreter did not start"

    def stop(self) -> None:
        """Close the warm interpreter's input, which ends it (it is waited for, so that its
        children's CPU time counts in this process's)."""
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def _receive(self, timeout: float) -> dict | None:
        """The next message, or None after ``timeout`` seconds without one."""
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            return None
        line = self.process.stdout.readline()
        assert line, "the warm interpreter exited"
        return json.loads(line)


WARM = WarmPython()


# ----- the warm interpreter's side ----------------------------------------------------------------


def serve() -> None:
    """Import, then fork a child for each request on stdin; reply with its pid, then its exit code.

    Replies go to a copy of stdout, and stdout itself to stderr, so that nothing an import prints
    can be taken for a reply."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for module in PRELOADED:
        __import__(module)
    reply(replies, {"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            run_child(request)
        reply(replies, {"pid": pid})
        _, status, usage = os.wait4(pid, 0)
        cpu_seconds = usage.ru_utime + usage.ru_stime
        reply(replies, {"returncode": os.waitstatus_to_exitcode(status), "cpu": cpu_seconds})


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
