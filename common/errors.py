"""One exception type for input we cannot use.

Library code raises `UserError` with a one-sentence message that says what was wrong and what to
do; only `cli.py` turns it into a printed line and a non-zero exit. Anything else that escapes is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Something the user gave us (a path, a flag, a file) that we cannot use."""

    exit_code = 2
