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


def load_failure(e: BaseException) -> str:
    """A short reason why ``torch.load(..., weights_only=True)`` refused or failed on a file.

    PyTorch's own message for a file holding pickled objects suggests loading it again with
    weights_only=False, which would run whatever the file holds; say what it holds instead.
    """
    import re

    text = str(e).strip()
    if "Weights only load failed" in text or "Unsupported global" in text:
        m = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({m.group(1)})" if m else ""
        return (f"it holds pickled Python objects{what} besides tensors and plain data, which "
                "eossl refuses to unpickle: loading them could run code")
    m = re.search(r"PytorchStreamReader failed reading (?:zip archive|file [^:]*): ([^.]+)", text)
    if m:  # a checkpoint cut short (interrupted copy or write) or not a zip archive at all
        return f"not a complete PyTorch archive: {m.group(1).strip()}"
    if not text:
        return type(e).__name__
    first = text.splitlines()[0]
    return first if len(first) <= 160 else first[:157] + "..."
