"""The live view: a compact display on stderr of each GPU's round, its progress and rate,
and the run's overall progress and ETA. JSON logs on stdout are untouched, so
``python -m supervisor cfg.toml | jq ...`` keeps working with the view on the terminal.

Each tick reads counters the state keeps up to date and the rounds running now: O(GPUs
+ running rounds), whatever the size of the experiment.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

import anyio

from supervisor import logs
from supervisor.records import GpuStatus, ObjectStatus
from supervisor.status import duration

if TYPE_CHECKING:
    from supervisor.supervisor import Supervisor

REFRESH_S = 1.0
CLEAR_TO_END = "\x1b[J"


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "#" * filled + "." * (width - filled)


class LiveView:
    def __init__(self, sup: Supervisor, stream: TextIO) -> None:
        self.sup, self.stream, self.height = sup, stream, 0
        self.lines: list[str] = []
        self.start_progress = sup.state.progress
        self.start_time = time.monotonic()

    def eta_s(self) -> float | None:
        s = self.sup.state
        gained, elapsed = s.progress - self.start_progress, time.monotonic() - self.start_time
        if gained <= 0 or elapsed <= 0:
            return None
        return (s.progress_target - s.progress) / (gained / elapsed)

    def render(self) -> list[str]:
        sup, s = self.sup, self.sup.state
        total = s.progress_target
        share = s.progress / total if total else 1.0
        state = " (draining)" if sup.draining.is_set() else ""
        lines = [f"{sup.config.exp_name}{state}: objects "
                 f"{s.objects_by_status[ObjectStatus.DONE]}/{len(s.order)} done, grasps "
                 f"{s.progress}/{total} [{_bar(share)}] {share:.0%}, "
                 f"ETA {duration(self.eta_s())}"]
        by_gpu: dict[int, list[str]] = {gpu: [] for gpu in sup.pool.gpus}
        for job, sink in list(sup.watch.values()):
            bar = sink.latest
            if bar is None:
                text = "starting"
            else:
                rate = f"{bar.it_per_s:.2f} it/s" if bar.it_per_s else "- it/s"
                text = f"[{_bar(bar.fraction, 10)}] {bar.n}/{bar.total} {rate}"
            by_gpu.setdefault(job.gpu, []).append(f"{job.name} {text}")
        for gpu, running in sorted(by_gpu.items()):
            rec = s.gpus.get(gpu)
            tag = "" if rec is None or rec.status == GpuStatus.HEALTHY else f" ({rec.status})"
            lines.append(f"  GPU {gpu}{tag}: " + ("; ".join(running) if running else "idle"))
        return lines

    def draw(self) -> None:
        self.lines = self.render()
        self.redraw()

    def redraw(self) -> None:
        """Draw the last rendered lines again (after a log line scrolled past)."""
        up = f"\x1b[{self.height}F" if self.height else ""
        self.stream.write(up + CLEAR_TO_END + "\n".join(self.lines) + "\n")
        self.stream.flush()
        self.height = len(self.lines)

    def clear(self) -> None:
        if self.height:
            self.stream.write(f"\x1b[{self.height}F" + CLEAR_TO_END)
            self.stream.flush()
            self.height = 0

    async def run(self) -> None:
        # Console logs on the same terminal: the view steps aside for each log line.
        logs.set_around_print((self.clear, self.redraw))
        try:
            while True:
                self.draw()
                await anyio.sleep(REFRESH_S)
        finally:
            logs.set_around_print(None)
            self.draw()
