"""`python -m aubench.launch [torchrun options] <aubench command> ...`: torchrun for aubench.

The same launch as `torchrun [options] -m aubench.cli <command> ...` (every torchrun option is
accepted as it is), with the exit behaviour of aubench's command line: when the ranks stop on a
documented exit code (a user error, a stopped training run, an interruption: docs/reliability.md),
rank 0 has printed the one line that says why, and the launcher exits with that code and adds
nothing. torchrun itself always exits 1 after a failed rank and prints its ChildFailedError
report with a Python traceback, whatever the ranks said. A rank that crashed (a signal, an
uncaught exception: exit 1) still gets torchrun's full report, and exit code 1.

    python -m aubench.launch --standalone --nproc_per_node 4 evaluate --methods all --data bp4d.h5 --out runs
"""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from datasets_tools.command_line import EXIT_INTERRUPTED, EXIT_STOPPED, EXIT_USER_ERROR

# the ranks' exit codes after which rank 0 has said all there is to say
DOCUMENTED_STOPS = (EXIT_USER_ERROR, EXIT_STOPPED, EXIT_INTERRUPTED)


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """(torchrun's options, the aubench command and its arguments): the command starts at the
    first argument that names an aubench subcommand; None when none does."""
    from aubench.cli import COMMANDS

    for i, word in enumerate(argv):
        if word in COMMANDS:
            return list(argv[:i]), list(argv[i:])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from aubench.cli import COMMANDS

    parts = split_arguments(sys.argv[1:] if argv is None else argv)
    if parts is None:
        print(f"aubench.launch: error: no aubench command given (one of {', '.join(sorted(COMMANDS))}); usage: "
              f"python -m aubench.launch [torchrun options] COMMAND ...", file=sys.stderr)
        return EXIT_USER_ERROR
    launcher_options, command = parts
    args = parse_args([*launcher_options, "-m", "aubench.cli", *command])
    # The agent's log lines ("closing signal SIGTERM", "failed (exitcode: 2)") would repeat
    # what rank 0 printed; a crash is still reported in full below.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(args)
    except ChildFailedError as failed:
        codes = {failure.exitcode for failure in failed.failures.values()}
        if len(codes) == 1 and codes <= set(DOCUMENTED_STOPS):
            return codes.pop()
        print(failed.format_msg(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
