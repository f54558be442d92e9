"""Errors a user can act on.

Raise these for expected failures (bad input, missing files, invalid recipes).
The CLI prints their message on one line without a traceback (unless --debug)
and exits with the error's `exit_code`.
"""


class OvssError(Exception):
    """A runtime failure the user can fix (missing data, corrupt file, ...). Exit code 1."""

    exit_code = 1


class UsageError(OvssError):
    """Bad usage: an invalid recipe, an unknown benchmark, a wrong option value. Exit code 2."""

    exit_code = 2
