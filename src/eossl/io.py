"""Every file eossl writes goes through here: written whole or not at all.

``atomic_path`` yields a temporary name beside the target (``.NAME.XXXX.part``) and renames it
onto the target only when the block succeeds, so a killed process or a failed write leaves the
old file (or no file), never a half-written one. A write that fails because of the disk or the
permissions (ENOSPC, EDQUOT, EFBIG, EACCES, EROFS, ...), whether the writer raised an OSError
or a library's own error (safetensors, PyTorch's archive writer, ONNX), becomes one
:class:`~eossl.errors.WriteError` naming the path. Temporary names left by a SIGKILL are
removed by :func:`remove_stale_parts` when a command starts again in the same folder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import WriteError

PART = ".part"  # every temporary name ends so; nothing else eossl writes does

# The failures that are about the disk or permissions, not about eossl or the data; the
# user hears the system's own words (os.strerror), with a hint where it helps.
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS,
               errno.EIO, errno.ENOTDIR)
_HINTS = {errno.EFBIG: " (a file-size limit: the file system's, or ulimit -f)",
          errno.ENOTDIR: " (a folder on the path is a file)"}


def _why(code: int) -> str:
    return os.strerror(code) + _HINTS.get(code, "")


# The same failures as libraries word them (Rust's "os error N", PyTorch's archive writer).
_TEXT = [(re.compile(p, re.I), why) for p, why in (
    (r"no space left|os error 28", _why(errno.ENOSPC)),
    (r"quota exceeded|os error 122", _why(errno.EDQUOT)),
    (r"file too large|os error 27", _why(errno.EFBIG)),
    (r"permission denied|os error 13", _why(errno.EACCES)),
    (r"read-only file system|os error 30", _why(errno.EROFS)),
    (r"file write failed|failed writing file|unexpected pos", None),
)]
_VAGUE = "the write did not complete: the disk may be full or a file-size limit reached"
_TEXT = [(p, why or _VAGUE) for p, why in _TEXT]


def write_failure(e: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """Why a write failed, when the cause is the disk or permissions; None for anything else
    (a bug, or bad data, that must not be reported as a disk problem). ``path``, when known,
    turns a library's vague "write did not complete" into the likely cause."""
    if isinstance(e, WriteError):
        return e.reason
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        return _why(e.errno)
    if isinstance(e, (OSError, RuntimeError)) or type(e).__name__ in ("SafetensorError",):
        text = str(e)
        for pattern, why in _TEXT:
            if pattern.search(text):
                return _likely(path) if why is _VAGUE and path is not None else why
    return None


def _likely(path) -> str:
    """The probable cause of a write that stopped short without an errno (PyTorch's archive
    writer): a full disk, or a file-size limit; else the vague words."""
    import resource
    import shutil

    folder = Path(path).parent
    try:
        if shutil.disk_usage(folder).free < (1 << 20):
            return _why(errno.ENOSPC)
    except OSError:
        pass
    if resource.getrlimit(resource.RLIMIT_FSIZE)[0] != resource.RLIM_INFINITY:
        return _why(errno.EFBIG)
    return _VAGUE


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block ends
    without error. ``suffix`` keeps an extension for writers that dispatch on it (matplotlib,
    GDAL). A disk or permission failure, in the block or in the rename, is a WriteError naming
    ``path``; the temporary file never survives.

    Nested writes (a model file and its sidecar, renamed together): a failure is blamed on the
    file being written, i.e. an inner block whose temporary file is still empty lets the
    failure pass to the outer one."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=suffix + PART)
        os.close(fd)
        _ACTIVE.append(tmp)
        yield Path(tmp)
        # mkstemp makes 0600 files; results, reports and checkpoints are for sharing, so they
        # get the permissions a plain open() would have given them.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as e:  # OSError, or a library's own error type (safetensors, torch)
        why = write_failure(e, path)
        if why is None or isinstance(e, WriteError) or _not_mine(tmp):
            raise
        raise WriteError(path, why, "the previous file is unchanged" if path.exists() else
                         "nothing was written") from e
    finally:
        if tmp is not None:
            if tmp in _ACTIVE:
                _ACTIVE.remove(tmp)
            if os.path.exists(tmp):
                os.remove(tmp)


_ACTIVE: list[str] = []  # temporary files of the atomic writes in progress, outermost first


def _not_mine(tmp: str | None) -> bool:
    """Whether a failure inside this write's block belongs to an outer write: this one's
    temporary file is empty (nothing written to it yet) and an outer write is in progress."""
    if tmp is None or tmp not in _ACTIVE or _ACTIVE.index(tmp) == 0:
        return False
    try:
        return os.path.getsize(tmp) == 0
    except OSError:
        return False


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) via a temporary file + fsync + rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | os.PathLike, obj, indent: int | None = 1, **kw) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, **kw))


def remove_stale_parts(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete temporary files a killed writer left in ``folder`` (``.NAME.*.part``); returns
    what was removed. Call it only where no other process is writing at the same time (at the
    start of a command that owns the folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob(f".*{PART}") if recursive else folder.glob(f".*{PART}")
    removed = []
    for p in found:
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def check_writable_folder(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be one: an existing file, a path
    under a file, or a folder this process may not write into."""
    from .errors import OutputExistsError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file, not a folder; choose another {what}")
    probe = folder
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputExistsError(f"{probe} is a file, not a folder; choose another {what}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputExistsError(f"{probe}: cannot write there (permission denied); choose "
                                f"another {what}")
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
