"""How the `hub` command ends when something goes wrong: one line on stderr, a meaningful exit code.

Exit codes (documented in `hub --help`):

- 0: the command ran and found nothing wrong;
- 1: the command ran and found problems (rows that would be quarantined, a leak blocked, a
  broken audit chain, a refused release);
- 2: the command could not run (bad configuration, missing key or file, an unexpected error).

Only errors hub raises on purpose are user errors, printed as their message: hub.errors
(NotFound, CommandFailed and its kinds), configuration and key errors, a blocked leak, a
missing file. Anything else, a plain KeyError included, is a bug or an unforeseen library
failure: it is printed as ``internal error: <type>: <message>`` with a hint to run with
``--debug``, which shows the traceback. The one-line message never carries a
source value: exception texts pass through the identifier scrubber and are cut to one line,
because an exception raised deep in a library may quote the data it choked on.
"""

from __future__ import annotations

import sys
import traceback

from hub.errors import CommandFailed

EXIT_PROBLEMS = 1
EXIT_CANNOT_RUN = 2
MAX_MESSAGE = 400


def one_line(message: str) -> str:
    """A message as one safe line: identifiers scrubbed, whitespace folded, length capped."""
    from hub.identifiers import redact_identifiers

    text = " ".join(redact_identifiers(str(message)).split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def describe(exc: BaseException) -> tuple[str, int, bool]:
    """(one-line message, exit code, expected) for an exception that ended a command.

    expected is False for a failure nobody phrased for the user (a bug or a library error).
    """
    from deid.keys import MasterKeyError
    from hub.errors import NotFound
    from hub.leakscan import LeakBlocked
    from hub.yamlio import ConfigError

    if isinstance(exc, CommandFailed):
        return one_line(str(exc)), exc.exit_code, True
    if isinstance(exc, LeakBlocked):
        return one_line(str(exc)), EXIT_PROBLEMS, True
    if isinstance(exc, ConfigError | MasterKeyError | FileNotFoundError | NotFound):
        return one_line(str(exc)), EXIT_CANNOT_RUN, True
    text = f"internal error: {type(exc).__name__}: {exc}" if str(exc) else f"internal error: {type(exc).__name__}"
    return one_line(text), EXIT_CANNOT_RUN, False


def report(exc: BaseException, debug: bool) -> int:
    """Print exc for the user on stderr (the traceback only when debugging); return the exit code."""
    message, code, expected = describe(exc)
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    hint = "" if expected or debug else " (run with --debug for the traceback)"
    print(f"error: {message}{hint}", file=sys.stderr)
    return code
