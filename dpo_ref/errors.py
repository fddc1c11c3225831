"""Errors for bad user input.

`InputError` is a `ValueError`, so API users can catch the standard type; the CLI catches `InputError`
and prints one line and exits 2 instead of a traceback.
"""

from __future__ import annotations

import errno


class InputError(ValueError):
    """Bad input: the message names the argument (or file/row/field) and what was expected."""


class InputTypeError(InputError, TypeError):
    """Bad input of the wrong type; both a `ValueError` and a `TypeError`."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that cleanups run; the CLI exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# the errors of writing to a standard stream that the reader or the disk caused: closed, gone, full
OUTPUT_ERRNOS = (errno.EBADF, errno.EPIPE, errno.ENOSPC)


def output_failure(err: OSError, prog: str) -> str:
    """The one line a command prints when writing its output failed (`err.errno` in OUTPUT_ERRNOS, exit 1); the
    standard output is then pointed at /dev/null, so the interpreter's own flush at exit fails no more."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    except OSError:
        pass
    return f"{prog}: error: cannot write the output ({err.strerror})"
