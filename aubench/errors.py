"""The one exception class for user mistakes (bad argument, file, fold, method ...).

The command line catches it and prints its message without a traceback (exit code 2).
Anything else that escapes is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix: the message says what is wrong and where."""
