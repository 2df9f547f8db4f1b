"""The convention both command lines (``aubench``, ``datasets_tools``) follow: one table of exit
codes, usage errors as one line, ``--quiet`` for progress, ``--out`` for what a command writes.
docs/reliability.md ("Exit codes") documents the table; tests/test_cli_convention.py walks both
parsers and checks the rest.
"""

from __future__ import annotations

import argparse

EXIT_OK = 0
EXIT_CHECK_FAILED = 1   # the command ran to its end, but something it checks failed (each named on stderr)
EXIT_USER_ERROR = 2     # a usage or user error: bad argument, bad or missing input, a refused setting
EXIT_STOPPED = 3        # training stopped (a loss that is not finite, out of memory); the checkpoint is kept
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_BROKEN_PIPE = 141  # the output went to a reader that quit, e.g. `| head` (128 + SIGPIPE)

QUIET_HELP = "no progress bars and no progress lines (results and errors are still printed)"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, "<prefix>: error: ... (see `<prog> --help`)",
    exit code EXIT_USER_ERROR; the prefix is the command's name unless a subclass says otherwise.
    Also resolves the earlier positional spelling of --out (add_out)."""

    def error_prefix(self) -> str:
        return self.prog

    def error_line(self, message: str) -> str:
        return f"{self.error_prefix()}: error: {message} (see `{self.prog} --help`)"

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, self.error_line(message) + "\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        positional = getattr(self, "_out_positional", None)
        if positional is not None:  # only the subcommand that declared it
            given = getattr(namespace, positional)
            delattr(namespace, positional)
            if given is not None and namespace.out is not None and given != namespace.out:
                self.error(f"OUT is given twice ({given} and --out {namespace.out}); give --out only")
            if given is not None:
                namespace.out = given
            if namespace.out is None and self._out_required:
                self.error("the following arguments are required: --out")
        return namespace, extras


def add_quiet(parser: argparse.ArgumentParser, help: str = QUIET_HELP) -> None:
    """--quiet, and its earlier spelling --no-progress (hidden; kept for one release)."""
    parser.add_argument("--quiet", action="store_true", help=help)
    parser.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def add_out(parser: argparse.ArgumentParser, help: str, *, required: bool = True, type=None,
            positional: str | None = None, alias: str | None = None, **kwargs) -> None:
    """--out: the file or folder the command writes. An earlier spelling is still accepted in its
    place, hidden from the help: `alias`, an option (e.g. "--csv"), or `positional`, a positional
    argument of that name (the parser must then be a OneLineParser, which checks that OUT is given
    once)."""
    if alias is not None:
        either = parser.add_mutually_exclusive_group(required=required)
        either.add_argument("--out", type=type, help=help, **kwargs)
        either.add_argument(alias, dest="out", type=type, help=argparse.SUPPRESS)
        return
    if positional is None:
        parser.add_argument("--out", required=required, type=type, help=help, **kwargs)
        return
    parser.add_argument("--out", type=type, help=help + (" (required)" if required else ""), **kwargs)
    parser.add_argument(positional, nargs="?", type=type, help=argparse.SUPPRESS)
    parser._out_positional, parser._out_required = positional, required
