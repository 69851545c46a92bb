"""The event journal: ``journal.jsonl``, one event a line, appended and fsynced in
groups; replayed after the snapshot at start-up.

A torn last line (a kill in the middle of a write) is ignored: it was never
acknowledged. Any other unreadable line is an error naming the recover command.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from supervisor.core import events as ev
from supervisor.storage.faults import crash_point
from supervisor.storage.fsutil import fsync_dir


class JournalError(ValueError):
    pass


class Journal:
    """Append-only; one writer (the merger)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            new = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            if new:
                fsync_dir(self.path.parent)
        return self._fd

    def append(self, lines: list[bytes]) -> None:
        """Write ``lines`` and fsync: once this returns, they survive a kill or a crash."""
        if not lines:
            return
        data = b"".join(lines)
        fd = self._open()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        crash_point("journal.before_fsync")
        os.fsync(fd)

    def truncate(self) -> None:
        """Empty the journal: a snapshot holding every event is on disk."""
        fd = self._open()
        os.ftruncate(fd, 0)
        os.fsync(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read(path: Path, after_seq: int) -> Iterator[tuple[int, ev.Event]]:
    """Events with a sequence number above ``after_seq``, in order."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    for number, line in enumerate(lines, 1):
        try:
            seq, event = ev.decode(line)
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines) and not torn:
                return  # the last line, cut short before its newline was fsynced
            raise JournalError(f"{path}: line {number} is not an event ({exc})") from None
        if seq > after_seq:
            yield seq, event
    del torn  # a line without its newline was never acknowledged
