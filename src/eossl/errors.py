"""Errors a user can act on.

Every error raised for bad input derives from :class:`EosslError`; the CLI prints such errors as
one line (no traceback unless ``--debug``) and exits non-zero. The message must name the culprit
(file, band, option) and say what was expected.
"""


class EosslError(Exception):
    """Base class for user-facing errors (bad input, missing data, bad option)."""


class BandError(EosslError, KeyError):
    """A band name is unknown for a sensor, or missing from the data."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class DataError(EosslError):
    """Imagery or labels are missing, corrupt, or not what was expected."""


class ConfigError(EosslError, ValueError):
    """An option or configuration value is invalid (unknown method, bad size, ...)."""


class OutputExistsError(EosslError):
    """An output folder already holds results that would be overwritten."""
