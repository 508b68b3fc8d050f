"""One exception type for problems the user can fix (bad paths, bad data, bad config).

The CLI prints these as a single ``error: ...`` line and exits with status 2 instead of a traceback; everything
else is a bug and keeps its traceback.
"""


class QponderError(Exception):
    """A user-facing error: the message names the file/row/key and what is wrong."""
