"""The exceptions the CLI turns into one line on stderr, and the helper that makes that line."""


class GancoreError(Exception):
    """A problem the user can fix: bad option, bad data, unknown plugin, conflicting plugins.

    The message is one line that says what is wrong and what to do about it. The command line
    exits with :attr:`exit_code`.
    """

    exit_code = 2


class Interrupted(GancoreError):
    """Training stopped on SIGINT or SIGTERM after writing a checkpoint; exits 128 + the signal number
    (130, 143), as shells report a process ended by that signal."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.exit_code = 128 + signal_number


def one_line(error: BaseException | str, limit: int = 200) -> str:
    """The first line of ``error``'s message (with its type for exceptions), shortened at a word
    boundary to at most ``limit`` characters, for messages that must stay one line."""
    if isinstance(error, BaseException):
        text = str(error).strip()
        first = text.splitlines()[0] if text else ""
        line = f"{type(error).__name__}: {first}" if first else type(error).__name__
    else:
        line = error.strip().splitlines()[0] if error.strip() else ""
    if len(line) <= limit:
        return line
    cut = line[: limit - 1].rsplit(" ", 1)[0]
    return cut + "…"
