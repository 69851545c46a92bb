"""A probe for tests: GPUs whose memory, utilisation and processes a test changes while
a run goes on, that fail or hang on demand."""

from __future__ import annotations

import threading

from supervisor.gpus.probe import ProbeError, Reading


class FakeProbe:
    """For tests: GPUs whose memory, utilisation and processes a test changes while the
    run goes on; ``failing`` GPUs raise, ``hanging`` GPUs block until ``release_hang``."""

    def __init__(self, free: dict[int, int], total_mib: int = 81_559) -> None:
        self.free = dict(free)
        self.total = {g: max(total_mib, f) for g, f in self.free.items()}
        self.util: dict[int, int] = {g: 0 for g in self.free}
        self.processes: dict[int, dict[int, int]] = {g: {} for g in self.free}
        self.failing: set[int] = set()
        self.hanging: set[int] = set()
        self._unhang = threading.Event()
        self.polls = 0

    def gpu_indices(self) -> list[int]:
        return sorted(self.free)

    def release_hang(self) -> None:
        self._unhang.set()

    def read(self, index: int) -> Reading:
        self.polls += 1
        if index in self.hanging:
            self._unhang.wait()
        if index in self.failing:
            raise ProbeError(f"GPU {index} fell off the bus (fake)")
        return Reading(self.free[index], self.total[index], self.util.get(index),
                       dict(self.processes.get(index, {})))
