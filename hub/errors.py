"""Errors the library raises for a user to act on (the command line prints them as one line)."""

from __future__ import annotations


class NotFound(KeyError):
    """Something the user named does not exist: an institution, a tag, a quarantine entry, a resource.

    A KeyError for callers that catch one, but printed as its message (a plain KeyError
    prints its argument's repr), and the only KeyError the command line treats as a user
    error: any other KeyError is a bug and is reported as one.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class CommandFailed(Exception):
    """A failure already phrased for the user; ``exit_code`` says which kind (1 problems found, 2 could not run)."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
