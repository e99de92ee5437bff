"""The one error type the data layer raises for bad datasets or arguments."""

from dp.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset is missing, corrupt or does not match what the caller needs.

    The message says what was expected, what was found, and what to do.
    """
