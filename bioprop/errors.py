"""The one exception type for user mistakes.

The CLI turns a ``BiopropError`` into a one-line message and exit code 2; anything else is a bug
and keeps its traceback.
"""

import sys
from collections.abc import Callable


class BiopropError(Exception):
    """A user mistake: bad config value, unknown name, missing or corrupt data file."""


class Diverged(BiopropError):
    """Training produced a non-finite loss or update (or a rule's state collapsed); the run's
    last epoch checkpoint is kept, and result.json records status "diverged"."""


def run_script(main: Callable[[], object]) -> None:
    """Run a developer script's ``main()`` the way the CLI runs a command: a user mistake
    (``BiopropError``) prints one line to stderr and exits with 2, anything else keeps its
    traceback."""
    try:
        main()
    except BiopropError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
