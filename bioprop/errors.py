"""The one exception type for user mistakes.

The CLI turns a ``BiopropError`` into a one-line message and exit code 2; anything else is a bug
and keeps its traceback.
"""


class BiopropError(Exception):
    """A user mistake: bad config value, unknown name, missing or corrupt data file."""


class Diverged(BiopropError):
    """Training produced a non-finite loss or update (or a rule's state collapsed); the run's
    last epoch checkpoint is kept, and result.json records status "diverged"."""
