"""The one exception type the CLI turns into a one-line message and exit status 2."""


class GancoreError(Exception):
    """A problem the user can fix: bad option, bad data, unknown plugin, conflicting plugins.

    The message is one line that says what is wrong and what to do about it.
    """
