"""Atomic file writes: the one way the package replaces a file that someone may rely on.

A checkpoint, an engine, an ONNX model, a results page or a report is written to a temporary file in the same
folder, flushed to disk, and renamed over the destination. A crash, a kill or a full disk at any moment leaves
either the previous file or the complete new one, never a truncated file; a failed write removes its temporary
file and says that the previous file is unchanged.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "AtomicWriteError",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "replace_with",
    "temp_path_beside",
]


class AtomicWriteError(OSError):
    """Writing a file failed (e.g. the disk is full); the destination was left as it was.

    ``errno`` is the failure's (``errno.ENOSPC`` for a full disk); the message names the file.
    """

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable where the platform and file system allow it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _failed(path: Path, existed: bool, e: OSError) -> AtomicWriteError:
    kept = "the previous file is unchanged" if existed else "no file was written"
    return AtomicWriteError(f"writing {path} failed ({e.strerror or e}); {kept}", e.errno)


def temp_path_beside(path: str | os.PathLike, suffix: str = ".tmp") -> str:
    """Create an empty temporary file in ``path``'s folder (created if missing) for a writer that needs a file
    name (e.g. ``torch.onnx.export``); hand it to :func:`replace_with` when complete, remove it otherwise.
    The file has the mode a plain ``open()`` would give (0666 minus the umask), not mkstemp's 0600."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except OSError as e:
        raise AtomicWriteError(f"cannot write {path}: {e.strerror or e}", e.errno) from e
    return tmp


def replace_with(tmp: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Flush the complete file ``tmp`` to disk and rename it over ``path`` (same folder). On failure ``tmp`` is
    removed and :class:`AtomicWriteError` says that ``path`` is unchanged. Returns ``path``."""
    path = Path(path)
    existed = path.exists()
    try:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _failed(path, existed, e) from e
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Context manager yielding a temporary file name beside ``path``: write the file there inside the block;
    it replaces ``path`` when the block completes and is removed when the block raises (``path`` untouched;
    an ``OSError`` is raised as :class:`AtomicWriteError` saying so)."""
    path = Path(path)
    existed = path.exists()
    tmp = temp_path_beside(path, suffix)
    try:
        yield tmp
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, AtomicWriteError):
            raise _failed(path, existed, e) from e
        raise
    replace_with(tmp, path)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Context manager yielding a file object whose contents replace ``path`` only when the block completes.

    Args:
        path: the destination. Its folder is created if missing; a folder at ``path`` is an error.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding for ``mode="w"`` (default UTF-8).

    Raises:
        AtomicWriteError: the write, flush or rename failed (full disk, read-only folder, ...); the message
            names the file and says that the previous file is unchanged (or that none was written).
        IsADirectoryError: ``path`` is a folder.
    Any other exception raised inside the block removes the temporary file and propagates unchanged; ``path``
    is untouched in every failure.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    existed = path.exists()
    tmp = temp_path_beside(path)
    try:
        text = mode == "w"
        with open(tmp, mode, encoding=(encoding or "utf-8") if text else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, AtomicWriteError):
            raise _failed(path, existed, e) from e
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)
    return Path(path)
