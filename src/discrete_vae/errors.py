"""Errors a user can fix. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: a wrong flag, a missing or corrupt file, an unknown name.

    The message is one line that says what is wrong and, where it helps, what to do.
    """


class DataError(UserError):
    """A dataset is missing, truncated, corrupt or of the wrong shape."""


class MissingDataError(DataError):
    """A dataset's files are not in the folder searched (and were not, or could not be, downloaded)."""


class ConfigError(UserError):
    """A configuration value is out of range or names something unknown."""


class NonFiniteError(ArithmeticError):
    """A NaN or infinity, located: which function produced it and at which index (the estimators'
    ``check=True``)."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or parameters; the last good checkpoint is kept.

    ``what`` says what was not finite (``"non-finite loss (nan)"``), ``step`` where; ``checkpoint`` is the
    step of the last good checkpoint (None: none was written yet) and ``resume`` the command that continues
    the run, which the message offers with a smaller learning rate.
    """

    def __init__(self, what: str, step: int, checkpoint: int | None, resume: str):
        if checkpoint is None:
            kept = "no checkpoint was written yet, so there is nothing to resume"
        else:
            kept = (f"the last good checkpoint (step {checkpoint}) is kept; continue with a smaller "
                    f"learning rate: {resume} --lr LR")
        super().__init__(f"{what} at step {step}; {kept}")
        self.step = step
        self.checkpoint = checkpoint
