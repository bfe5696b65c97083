"""Exception families. Messages say what was wrong and what to do instead.

Each subclasses the matching builtin too, so ``except ValueError`` keeps working.
"""


class PydiffgenError(Exception):
    """Base of every error pydiffgen raises on purpose."""


class InputError(PydiffgenError, ValueError):
    """A tensor or argument has the wrong shape, dtype, range or value."""


class DataError(PydiffgenError, ValueError):
    """A dataset name, file or folder cannot be loaded as asked."""


class ConfigError(PydiffgenError, ValueError):
    """A configuration, preset or model name is unknown or inconsistent."""


class BackendError(PydiffgenError, RuntimeError):
    """A requested backend cannot run here (the message lists every backend and why)."""


class CheckpointError(PydiffgenError, RuntimeError):
    """A checkpoint or result file is missing, corrupt or does not match the config."""
