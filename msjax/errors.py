"""The errors a user can fix. Both CLIs catch ``MsjaxError`` and print its message, one line that
names the problem and the fix, and exit with status 2; anything else is a bug in msjax."""


class MsjaxError(Exception):
    """A problem with the user's input, data, run directory or machine, with what to do."""


class ConfigError(MsjaxError, ValueError):
    """An impossible configuration; the message names the field and the fix."""


class DataError(MsjaxError, ValueError):
    """A dataset that is missing or unusable, with what to do about it."""


class RunDirError(MsjaxError):
    """A run directory that cannot be used as asked: another config, in use by another process,
    not written by msjax, or without a readable checkpoint."""


class StorageError(MsjaxError, OSError):
    """Saving a checkpoint or log failed (read-only, full, permissions); nothing written so far
    is lost."""


class NonFiniteError(MsjaxError, FloatingPointError):
    """Training produced a non-finite loss or gradient; the message names the step and the last
    good checkpoint."""
