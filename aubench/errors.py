"""The one exception class for user mistakes (bad argument, file, fold, method ...).

The command line catches it and prints its message without a traceback (exit code 2; 3 for
TrainingStopped). Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix: the message says what is wrong and where."""

    exit_code = 2


class TrainingStopped(UserError):
    """Training cannot go on with these settings (a loss that is not finite, out of memory): the
    message names where and what to try; the last checkpoint written is kept as it was."""

    exit_code = 3
