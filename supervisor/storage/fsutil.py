"""Atomic, durable file writes: a killed process leaves the old file or the new one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

from supervisor.storage.faults import crash_point


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write ``path`` through ``write(fileobj)``: temp file in the same folder, fsync, rename.

    On any error (ENOSPC included) the temp file is removed and ``path`` keeps its old
    content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600: give the file the mode open() would, under the umask,
        # so that other users of a shared server can read the datasets.
        os.fchmod(fd, 0o666 & ~_IMPORT_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        crash_point("write.before_replace")
        os.replace(tmp, path)
        crash_point("write.after_replace")
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask would, for an instant,
    for every thread): Linux shows it in /proc/self/status."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: at import, before any worker thread runs
    os.umask(mask)
    return mask


_IMPORT_UMASK = current_umask()


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove temp files that a killed process left behind in ``folder``."""
    removed = []
    if folder.is_dir():
        for path in folder.glob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))
