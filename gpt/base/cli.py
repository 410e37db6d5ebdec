"""The command-line edge: user errors and failed file operations become one line on stderr and
exit code 2; Ctrl-C ends a command with exit code 130 and one line."""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from gpt.base.errors import UserError, describe_os_error

USER_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130  # the shell's code for a process that Ctrl-C (SIGINT) stopped


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a one-line UserError like every other mistake.

    Plain argparse prints its usage block and ``PROG: error: ...``; here the message ends with a
    pointer to ``--help``, which has the usage.
    """

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``: a :class:`UserError` or an :class:`OSError` becomes ``error: ...`` and
    exit code 2, Ctrl-C ``interrupted ...`` and exit code 130. Every command writes under
    temporary names that it removes when it fails, so no partial output is left behind."""
    try:
        return main(sys.argv[1:] if argv is None else argv) or 0
    except UserError as error:
        say_on_stderr(f"error: {error}")
        return USER_ERROR_EXIT_CODE
    except OSError as error:
        say_on_stderr(f"error: {describe_os_error(error)}")
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        say_on_stderr("interrupted (Ctrl-C); nothing unfinished was kept")
        return INTERRUPTED_EXIT_CODE


def say_on_stderr(line: str) -> None:
    """``line`` and its newline in one write. ``print`` writes them apart where stderr is
    unbuffered, as torchrun starts its processes (``python -u``): the lines of two processes
    that fail together then ran into one another on their shared stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
