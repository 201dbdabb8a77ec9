"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a wrong flag, a missing or corrupt file, an unknown name.

    The message is one line that says what is wrong and, where it helps, what to do.
    """


class DataError(UserError):
    """A dataset is missing, truncated, corrupt or of the wrong shape."""


class ConfigError(UserError):
    """A configuration value is out of range or names something unknown."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""

    def __init__(self, step: int, value: float):
        super().__init__(
            f"non-finite loss ({value}) at step {step}; the last good checkpoint is kept"
        )
        self.step = step
        self.value = value
