"""One supervisor per experiment: an flock on ``{exp_dir}/supervisor.lock``.

The kernel drops the lock when its holder dies, however it dies, so a stale lock file
from a killed supervisor never blocks; the pid inside only serves the error message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from supervisor.storage import paths



class LockedError(RuntimeError):
    """Another live supervisor holds this experiment."""


def in_use(path: Path, holder: int | None) -> LockedError:
    return LockedError(
        f"{path}: experiment is in use by a running supervisor (pid {holder}); "
        f"wait for it, stop it with kill -INT {holder}, or pick another exp_name")


def live_holder(exp_dir: Path) -> int | None:
    """The pid of a live supervisor holding ``exp_dir``, read without touching the lock
    (so that looking never blocks a supervisor that is starting)."""
    try:
        pid = int(paths.lock(exp_dir).read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"supervisor" in cmdline else None


class ExperimentLock:
    def __init__(self, exp_dir: Path) -> None:
        self.path = paths.lock(exp_dir)
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise in_use(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
