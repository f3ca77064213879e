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


class WriteError(EosslError):
    """A file could not be written because of the disk or permissions (full disk, quota,
    file-size limit, read-only or forbidden folder). Raised by eossl.io, which leaves nothing
    half-written; ``path`` is the file, ``reason`` the cause in words."""

    def __init__(self, path, reason: str, note: str = "nothing was written") -> None:
        self.path, self.reason, self.note = path, reason, note
        super().__init__(f"{path}: write failed ({reason}){'; ' + note if note else ''}")


class ExportCheckError(EosslError):
    """An export, loaded back in a library it claims, does not compute eossl's features (or
    does not load); the export is not written."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a command that can be continued; the message says how. The
    CLI prints it and exits with ``exit_code`` (130 after Ctrl-C, 143 after SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    if "mmap can only be used with files saved with" in text:
        # torch.load(mmap=True) on a file that is no zip archive: junk, or PyTorch's legacy
        # format, which eossl never writes
        return "not a PyTorch checkpoint (not a zip archive; eossl checkpoints are)"
    if isinstance(e, EOFError):
        return "the file is empty or cut short"
    if isinstance(e, (KeyError, IndexError)) or "invalid load key" in text:
        # torch's legacy (non-zip) reader on bytes that are no pickle: KeyError(101) for "e"
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    if not text:
        return type(e).__name__
    first = text.splitlines()[0]
    return first if len(first) <= 160 else first[:157] + "..."
