"""Errors for bad user input.

`InputError` is a `ValueError`, so API users can catch the standard type; the CLI catches `InputError`
and prints one line and exits 2 instead of a traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: the message names the argument (or file/row/field) and what was expected."""


class InputTypeError(InputError, TypeError):
    """Bad input of the wrong type; both a `ValueError` and a `TypeError`."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C's KeyboardInterrupt so that cleanups run; the CLI exits 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
