"""The one exception type the CLI turns into a one-line message (exit status 2)."""


class CaeError(Exception):
    """A user-facing error: its message names the file or option and what was expected."""
