"""The project's error type for a user's mistake: the CLI prints it in one line, no traceback."""

import errno

# Errors of the file system a user can fix (a full disk, a read-only run dir, no permission, a
# failing disk): one line, no traceback.
USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


class MsaDistError(ValueError):
    """A user-facing error: bad input, bad config, missing files or weights."""


def user_message(exc: MsaDistError) -> str:
    """The one-line message, also for an error raised in a DataLoader worker (which torch re-raises
    with the worker's traceback in the message)."""
    text = str(exc)
    if text.startswith("Caught "):
        marker = f"{type(exc).__name__}: "
        last = [line for line in text.splitlines() if marker in line]
        if last:
            return last[-1].split(marker, 1)[1]
    return text
