"""The errors a user can fix. dp's command-line tools print their message on one line
(``error: ...``) and exit with status 2; every other exception is a bug and keeps its
traceback (dp/cli_errors.py).

This module imports nothing, so every layer (data and core included) may raise these.
"""


class UserError(Exception):
    """Bad input the user can fix: the message says what was expected, what was found, and what to do."""


class ConfigError(UserError, ValueError):
    """A config value or argument outside what it accepts."""
