"""The one exception class for user mistakes (bad argument, file, fold, method ...).

The command line catches it and prints its message without a traceback (exit code 2; 3 for
TrainingStopped: the table of datasets_tools.command_line). Anything else that escapes is a bug
and keeps its traceback.
"""
from datasets_tools.command_line import EXIT_STOPPED, EXIT_USER_ERROR


class UserError(Exception):
    """A problem the user can fix: the message says what is wrong and where."""

    exit_code = EXIT_USER_ERROR


class TrainingStopped(UserError):
    """Training cannot go on with these settings (a loss that is not finite, out of memory): the
    message names where and what to try; the last checkpoint written is kept as it was."""

    exit_code = EXIT_STOPPED
