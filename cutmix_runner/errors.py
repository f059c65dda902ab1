"""The errors a user can fix. The CLI prints any of them as one line and exits with status 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem in the input (config, data, weights, checkpoint), not in the program."""


class ConfigError(UserError, ValueError):
    """A config value that is well-typed but not allowed; the message names the key."""


class DataError(UserError):
    """Missing, corrupt or malformed data; the message says which file and how to fix it."""


class ModelError(UserError):
    """Unknown backbone, or weights that do not fit it."""


class RunError(UserError):
    """A run that cannot start or continue: a used directory, a bad checkpoint, a NaN loss."""
