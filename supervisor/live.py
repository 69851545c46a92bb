"""The live view: a compact display on stderr of each GPU's round, its progress and rate,
and the run's overall progress and ETA. JSON logs on stdout are untouched, so
``python -m supervisor cfg.toml | jq ...`` keeps working with the view on the terminal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

import anyio

from supervisor import logs, status

if TYPE_CHECKING:
    from supervisor.supervisor import Supervisor

REFRESH_S = 1.0
CLEAR_TO_END = "\x1b[J"


def _bar(fraction: float, width: int = 20) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "#" * filled + "." * (width - filled)


def render(sup: Supervisor) -> list[str]:
    s = status.summarize(sup.config, sup.manifest)
    share = s["grasps_done"] / s["grasps_total"] if s["grasps_total"] else 1.0
    eta = status._duration(s["eta_s"])
    state = " (draining)" if sup.draining.is_set() else ""
    lines = [f"{sup.config.exp_name}{state}: objects {s['objects_done']}/{s['objects']} done, "
             f"grasps {s['grasps_done']}/{s['grasps_total']} [{_bar(share)}] {share:.0%}, "
             f"ETA {eta}"]
    by_gpu: dict[int, list[str]] = {gpu: [] for gpu in sup.pool.in_flight}
    for job, sink in sup.watch.values():
        bar = sink.latest
        if bar is None:
            text = "starting"
        else:
            rate = f"{bar.it_per_s:.2f} it/s" if bar.it_per_s else "- it/s"
            text = f"[{_bar(bar.fraction, 10)}] {bar.n}/{bar.total} {rate}"
        by_gpu.setdefault(job.gpu, []).append(f"{job.name} {text}")
    for gpu, rounds in sorted(by_gpu.items()):
        lost = " (lost)" if gpu in sup.pool.dead else ""
        lines.append(f"  GPU {gpu}{lost}: " + ("; ".join(rounds) if rounds else "idle"))
    return lines


class LiveView:
    def __init__(self, sup: Supervisor, stream: TextIO) -> None:
        self.sup, self.stream, self.height = sup, stream, 0
        self.lines: list[str] = []

    def draw(self) -> None:
        self.lines = render(self.sup)
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
