"""The one exception type users see.

Anything a user can get wrong (a path, a column, a config value) raises
:class:`UsageError` with a single line that says what is wrong, where, and how
to fix it. The CLI prints that line and exits with status 2; library callers
can catch it as a ``ValueError``.
"""


class UsageError(ValueError):
    """Bad input from the user: one line naming the problem and the fix."""
