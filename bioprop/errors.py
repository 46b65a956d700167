"""The one exception type for user mistakes.

The CLI turns a ``BiopropError`` into a one-line message and exit code 2; anything else is a bug
and keeps its traceback.
"""


class BiopropError(Exception):
    """A user mistake: bad config value, unknown name, missing or corrupt data file."""
