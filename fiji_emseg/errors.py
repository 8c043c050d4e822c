"""User-facing errors.

Every problem a user can fix (bad input, a wrong model, a full disk) is raised as an
:class:`EmsegError` whose message names the problem *and* the fix in one line. The command
line prints that line and exits non-zero; the Fiji layer shows it in a dialog and the Log.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class EmsegError(Exception):
    """A problem the user can fix; the message says what and how."""


class InputDataError(EmsegError):
    """Images or masks that cannot be used as given (shape, dtype, values, size)."""


class ModelFileError(EmsegError):
    """A model file or folder that is missing, corrupt or incompatible with the data."""


class ConfigError(EmsegError):
    """An option value that is out of range or inconsistent with other options."""


class OutputError(EmsegError):
    """An output that cannot be written (exists already, disk full, no permission)."""


class TrainingInterrupted(EmsegError):
    """Training was stopped by the user; the best model and a resumable checkpoint were kept."""


class EmsegWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. an empty class)."""
