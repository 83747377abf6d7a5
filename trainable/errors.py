"""The one exception type for input a user can fix."""


class UserError(Exception):
    """Bad input (config value, flag, file, model, address): the CLI prints it on one line and exits 2."""

    exit_code = 2

    def __init__(self, message: str):
        # One line, always: a multi-line library message would read like a traceback.
        super().__init__(" ".join(str(message).split()))


class TrialOutOfMemoryError(RuntimeError):
    """The trial needed more memory than it has (its memory_limit_gb, or the device's)."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An exception's first line of message (its type name when it has none), for one-line errors."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line if limit is None else line[:limit]
