"""Following a job's output files (``--output``, ``--error`` in the experiment's folder)
as the job writes them, like ``tail -f``: new bytes are read each time ``read`` is called
and split into lines exactly as the runner splits a child's pipes (``\\n`` and ``\\r``,
capped). A file that does not exist yet (the job is pending) reads as empty."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from supervisor.backends.runner import MAX_LINE_CHARS, split_lines

READ_BYTES = 1 << 20  # at most this much per read: a flood cannot stall the event loop


class Follower:
    def __init__(self, path: Path, stream: str, on_line: Callable[[str, str], None]) -> None:
        self.path, self.stream, self.on_line = path, stream, on_line
        self.offset = 0
        self.buffer = bytearray()

    def read(self) -> bool:
        """Hand on the complete lines written since the last call; True if any bytes came."""
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read(READ_BYTES)
        except OSError:
            return False
        if not chunk:
            return False
        self.offset += len(chunk)
        self.buffer += chunk
        for raw in split_lines(self.buffer):
            if raw:
                self.on_line(self.stream, raw.decode("utf-8", "replace")[:MAX_LINE_CHARS])
        return True

    def finish(self) -> None:
        """The job has ended: the rest of the file, and a last line without a newline."""
        while self.read():
            pass
        if self.buffer:
            self.on_line(self.stream, self.buffer.decode("utf-8", "replace")[:MAX_LINE_CHARS])
            self.buffer.clear()
