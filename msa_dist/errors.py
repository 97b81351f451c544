"""The project's error type for a user's mistake: the CLI prints it in one line, no traceback."""


class MsaDistError(ValueError):
    """A user-facing error: bad input, bad config, missing files or weights."""
