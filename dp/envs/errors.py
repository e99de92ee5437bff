"""Errors for a task name or env option the user got wrong. dp's command-line tools print
their message on one line and exit with status 2; the extra base classes keep the types
callers already catch (KeyError for an unknown task, TypeError for an unknown option)."""


class EnvConfigError(Exception):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownTaskError(EnvConfigError, KeyError):
    """No task of that name."""


class EnvOptionError(EnvConfigError, TypeError):
    """An option the task does not take."""


class EnvValueError(EnvConfigError, ValueError):
    """An option value outside what the task accepts."""
