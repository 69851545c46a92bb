"""The emulator's cards as a probe (``[gpu] probe = "emulator"``): the shared cards of
``supervisor.emulator.cards`` read as NVML would read real ones (free and total memory,
the memory of each round's process, utilisation), so that a run over the emulator shows
admission and packing decisions end to end without a GPU. The cards' folder and size
come from the config's ``[main] env`` (``EMULATOR_GPU_DIR``, relative to ``[main] cwd`` as
the rounds see it, and ``EMULATOR_GPU_MEMORY_MIB``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from supervisor.gpus.probe import GpuError, Reading

DEFAULT_CARD_MIB = 81920  # the emulator's default card (an 80 GB one)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class EmulatorProbe:
    def __init__(self, gpus: Sequence[int], env: Mapping[str, str],
                 cwd: Path | None = None) -> None:
        env = {**os.environ, **env}  # the rounds inherit the supervisor's environment
        root = env.get("EMULATOR_GPU_DIR")
        if not root:
            raise GpuError('gpu.probe = "emulator" needs EMULATOR_GPU_DIR in [main] env (or '
                           'the environment), the folder of the emulated cards')
        self.root = (cwd or Path.cwd()) / root  # relative: to the rounds' folder, as theirs
        self.indices = list(gpus)
        size = env.get("EMULATOR_GPU_MEMORY_MIB", "") or str(DEFAULT_CARD_MIB)
        curve = env.get("EMULATOR_GPU_CURVE", "") or "1"
        if not (size.isascii() and size.isdigit()) or int(size) <= 0:
            raise GpuError(f"EMULATOR_GPU_MEMORY_MIB = {size!r}: expected a card's size in "
                           f"MiB, e.g. \"40000\"")
        footprint = env.get("EMULATOR_ROUND_MEMORY_MIB", "") or "0"
        if not (footprint.isascii() and footprint.isdigit()):  # else every round fails
            raise GpuError(f"EMULATOR_ROUND_MEMORY_MIB = {footprint!r}: expected what one "
                           f"round takes on its card in MiB, e.g. \"6000\"")
        delay = env.get("EMULATOR_MEMORY_DELAY_S", "") or "0.1"
        try:
            if not 0 <= float(delay) < math.inf:
                raise ValueError
        except ValueError:
            raise GpuError(f"EMULATOR_MEMORY_DELAY_S = {delay!r}: expected seconds before a "
                           f"round's memory appears, e.g. \"0.1\"") from None
        try:
            if not all(0 < float(f) < math.inf for f in curve.split(",")):
                raise ValueError
        except ValueError:
            raise GpuError(f"EMULATOR_GPU_CURVE = {curve!r}: expected positive numbers "
                           f"separated by commas, e.g. \"1,1.8,1.7\"") from None
        self.size_mib = int(size)

    def gpu_indices(self) -> list[int]:
        return list(self.indices)

    def _entries(self, index: int) -> list[tuple[int | None, dict[str, Any]]]:
        found: list[tuple[int | None, dict[str, Any]]] = []
        for path in (self.root / f"gpu{index}").glob("*.json"):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if path.stem.isdigit() and _alive(int(path.stem)):
                found.append((int(path.stem), record))
            elif path.stem.startswith("foreign"):
                found.append((None, record))
        return found

    def read(self, index: int) -> Reading:
        entries = self._entries(index)
        used = sum(int(r.get("mib", 0)) for _, r in entries)
        busy = any(r.get("iterating") or r.get("load") for _, r in entries)
        processes = {pid: int(r.get("mib", 0)) for pid, r in entries if pid is not None}
        return Reading(max(0, self.size_mib - used), self.size_mib, 100 if busy else 0,
                       processes)
