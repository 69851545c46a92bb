"""The live view: a compact display on stderr of each GPU's round, its progress and rate,
and the run's overall progress and ETA. JSON logs on stdout are untouched, so
``python -m supervisor cfg.toml | jq ...`` keeps working with the view on the terminal.

Each tick reads counters the state keeps up to date and the rounds running now: O(GPUs
+ running rounds), whatever the size of the experiment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import anyio

from supervisor import logs
from supervisor.core import slots
from supervisor.run.progress import Progress

REFRESH_S = 1.0
CLEAR_TO_END = "\x1b[J"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


@dataclass(frozen=True)
class Snapshot:
    """What the view shows, read from the state's counters: O(GPUs + running rounds)."""
    exp_name: str
    draining: bool
    objects: int
    objects_done: int
    progress: int  # accepted grasps, at most each object's target
    progress_target: int
    gpus: dict[Any, str]  # gpu -> "" (healthy) or its status
    running: list[tuple[int, str, Progress | None]] = field(default_factory=list)
    validation: str = ""  # [validate]: what passed so far and the backlog
    waiting: dict[str, str] = field(default_factory=dict)  # round -> "pending (Priority)"


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "#" * filled + "." * (width - filled)


class LiveView:
    """Draws on ``stream`` every REFRESH_S until cancelled. A terminal that went away (a
    closed SSH session: EIO) ends the view quietly; the run goes on without it."""

    def __init__(self, snapshot: Callable[[], Snapshot], stream: TextIO) -> None:
        self.snapshot, self.stream, self.height = snapshot, stream, 0
        self.lines: list[str] = []
        self.dead = False
        first = snapshot()
        self.start_progress, self.start_time = first.progress, time.monotonic()

    def eta_s(self, s: Snapshot) -> float | None:
        gained, elapsed = s.progress - self.start_progress, time.monotonic() - self.start_time
        if gained <= 0 or elapsed <= 0:
            return None
        return (s.progress_target - s.progress) / (gained / elapsed)

    def render(self) -> list[str]:
        s = self.snapshot()
        share = s.progress / s.progress_target if s.progress_target else 1.0
        state = " (draining)" if s.draining else ""
        lines = [f"{s.exp_name}{state}: objects {s.objects_done}/{s.objects} done, grasps "
                 f"{s.progress}/{s.progress_target} [{_bar(share)}] {share:.0%}, "
                 f"ETA {duration(self.eta_s(s))}"]
        by_gpu: dict[Any, list[str]] = {gpu: [] for gpu in s.gpus}
        for gpu, name, bar in s.running:
            if bar is None:
                text = s.waiting.get(name, "starting")
            else:
                rate = f"{bar.it_per_s:.2f} it/s" if bar.it_per_s else "- it/s"
                text = f"[{_bar(bar.fraction, 10)}] {bar.n}/{bar.total} {rate}"
            by_gpu.setdefault(gpu, []).append(f"{name} {text}")
        for gpu, running in sorted(by_gpu.items(), key=lambda i: slots.order(i[0])):
            tag = f" ({s.gpus[gpu]})" if s.gpus.get(gpu) else ""
            lines.append(f"  {slots.label(gpu)}{tag}: "
                         + ("; ".join(running) if running else "idle"))
        if s.validation:
            lines.append(f"  validation: {s.validation}")
        return lines

    def draw(self) -> None:
        self.lines = self.render()
        self.redraw()

    def _write(self, text: str) -> None:
        if self.dead:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # EIO from a hung-up terminal, a closed stream
            self.dead = True
            logs.set_around_print(None)

    def redraw(self) -> None:
        """Draw the last rendered lines again (after a log line scrolled past)."""
        up = f"\x1b[{self.height}F" if self.height else ""
        self._write(up + CLEAR_TO_END + "\n".join(self.lines) + "\n")
        self.height = len(self.lines)

    def clear(self) -> None:
        if self.height:
            self._write(f"\x1b[{self.height}F" + CLEAR_TO_END)
            self.height = 0

    async def run(self) -> None:
        # Console logs on the same terminal: the view steps aside for each log line.
        logs.set_around_print((self.clear, self.redraw))
        try:
            while not self.dead:
                self.draw()
                await anyio.sleep(REFRESH_S)
        finally:
            logs.set_around_print(None)
            self.draw()
