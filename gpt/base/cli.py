"""The command-line edge: user errors become one line on stderr and exit code 2."""

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from gpt.base.errors import UserError

USER_ERROR_EXIT_CODE = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line is a one-line UserError like every other mistake.

    Plain argparse prints its usage block and ``PROG: error: ...``; here the message ends with a
    pointer to ``--help``, which has the usage.
    """

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message}; see {self.prog} --help")


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` and turn a :class:`UserError` into ``error: ...`` and exit code 2."""
    try:
        return main(sys.argv[1:] if argv is None else argv) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
