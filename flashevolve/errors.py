"""Errors meant for the user: one clear sentence naming what is wrong and how to fix it."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (config, task file, endpoint, model, port). The CLI prints it without traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value failed validation (also a ValueError, for library callers)."""


class TaskFileError(UserError):
    """A task or dataset file is malformed; the message names file, line and field."""

    def __init__(self, path: str, line: int | None, field: str | None, problem: str) -> None:
        where = path if line is None else f"{path}:{line}"
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {problem}")
        self.path, self.line, self.field, self.problem = path, line, field, problem


class BackendError(UserError):
    """A backend could not be started or reached."""


class RunDirectoryError(UserError):
    """The run directory cannot be written (permissions, a full disk); what is already there is
    left intact, so the run can be resumed once the cause is fixed."""
