"""The GPU pool: an NVML probe behind a small interface, slots, free-memory admission.

Only NvmlProbe touches pynvml, and only when created, so CPU machines never need a driver.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

from supervisor.config import GpuSettings

MIB = 1024 * 1024


class GpuError(RuntimeError):
    """No usable GPU set could be formed (NVML missing for gpus = "all", unknown index)."""


class ProbeError(RuntimeError):
    """Reading one GPU failed (for example it fell off the bus)."""


@dataclass(frozen=True)
class Reading:
    """One look at one GPU. Fields are None when the probe cannot know them (no NVML)."""

    free_mib: int | None = None
    total_mib: int | None = None
    util_percent: int | None = None
    # pid -> MiB of GPU memory NVML attributes to that process (compute processes)
    processes: Mapping[int, int] = field(default_factory=dict)

    @property
    def used_mib(self) -> int | None:
        if self.free_mib is None or self.total_mib is None:
            return None
        return self.total_mib - self.free_mib


class Probe(Protocol):
    def gpu_indices(self) -> list[int]: ...

    def read(self, index: int) -> Reading:
        """Blocking (NVML can hang on a failing card): call it from a worker thread.
        Raises ProbeError when the GPU cannot be read."""


class NvmlProbe:
    """GPUs from NVML, numbered in PCI bus order (CUDA_DEVICE_ORDER=PCI_BUS_ID)."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
            raise ProbeError(f"pynvml is not installed ({exc})") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise ProbeError(f"NVML did not start ({exc})") from None

    def gpu_indices(self) -> list[int]:
        try:
            return list(range(self._nvml.nvmlDeviceGetCount()))
        except self._nvml.NVMLError as exc:
            raise ProbeError(f"NVML could not count GPUs ({exc})") from None

    def read(self, index: int) -> Reading:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as exc:
            raise ProbeError(f"NVML error on GPU {index} ({exc})") from None
        util = processes = None
        try:
            util = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            pass  # not supported on every card: memory is what admission needs
        try:
            processes = {
                int(p.pid): int((p.usedGpuMemory or 0) // MIB)
                for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            }
        except nvml.NVMLError:
            pass
        return Reading(int(memory.free // MIB), int(memory.total // MIB), util, processes or {})


class StaticProbe:
    """An explicit list of GPUs without memory checks (no NVML, or probe = "static")."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)

    def gpu_indices(self) -> list[int]:
        return list(self.indices)

    def read(self, index: int) -> Reading:
        return Reading()


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


def make_probe(kind: str, gpus: str | Sequence[int]) -> tuple[Probe, str | None]:
    """The probe for the config, and a warning to log when memory checks are off."""
    if kind == "static":
        if gpus == "all":
            raise GpuError('gpu.probe = "static" needs gpus to be a list of GPU indices')
        return StaticProbe(list(gpus)), "GPU memory checks are off (gpu.probe = \"static\")"
    try:
        return NvmlProbe(), None
    except ProbeError as exc:
        if kind == "nvml" or gpus == "all":
            hint = ('gpus = "all" needs NVML to find the GPUs: install the NVIDIA driver or '
                    'list the GPU indices, e.g. gpus = [0, 1]')
            raise GpuError(f"{exc}; {hint}") from None
        return StaticProbe(list(gpus)), f"{exc}: using gpus {list(gpus)} without memory checks"


@dataclass
class Admission:
    gpu: int | None
    short: dict[int, str] = field(default_factory=dict)  # GPUs refused for lack of memory
    busy: list[int] = field(default_factory=list)  # GPUs whose slots are all taken
    lost: dict[int, str] = field(default_factory=dict)  # GPUs taken out of the pool now


class GpuPool:
    """Slots per GPU; a round is admitted where memory minus rounds in flight suffices."""

    def __init__(self, probe: Probe, gpus: str | Sequence[int], settings: GpuSettings) -> None:
        found = probe.gpu_indices()
        if gpus == "all":
            chosen = found
        else:
            unknown = [g for g in gpus if g not in found]
            if unknown:
                raise GpuError(f"gpus lists {unknown}, but the GPUs found are {found}")
            chosen = list(gpus)
        if not chosen:
            raise GpuError("no GPU found: set gpus to a list of GPU indices")
        self.probe, self.settings = probe, settings
        self.in_flight = {g: 0 for g in chosen}
        self.dead: dict[int, str] = {}

    @property
    def gpus(self) -> list[int]:
        return [g for g in self.in_flight if g not in self.dead]

    def poll(self) -> dict[int, int | None | ProbeError]:
        """Free MiB of each usable GPU with a free slot, or the error reading it.

        Blocking (NVML can hang on a failing card): the dispatcher runs it in a thread.
        """
        readings: dict[int, int | None | ProbeError] = {}
        for gpu in self.gpus:
            if self.in_flight[gpu] < self.settings.max_rounds_per_gpu:
                try:
                    readings[gpu] = self.probe.read(gpu).free_mib
                except ProbeError as exc:
                    readings[gpu] = exc
        return readings

    def _short(self, gpu: int, free: int | None) -> str | None:
        """Why ``gpu`` lacks memory for one more round, or None if it has enough."""
        s, busy = self.settings, self.in_flight[gpu]
        if free is None:
            return None
        available = free - busy * s.round_memory_mib
        if available < s.min_free_mib:
            return (f"{available} MiB available ({free} free - {busy} x {s.round_memory_mib} "
                    f"reserved) < min_free_mib {s.min_free_mib}")
        return None

    def admit(self, avoid: frozenset[int] = frozenset(),
              readings: dict[int, int | None | ProbeError] | None = None) -> Admission:
        """Take a slot on the least busy admissible GPU (lowest index on ties), one not in
        ``avoid`` if any qualifies: a retry goes to another card than the one it failed on.

        ``readings`` comes from poll(); without it the probe is read here.
        """
        readings = self.poll() if readings is None else readings
        result = Admission(None)
        for gpu, reading in readings.items():  # every failed reading, whichever GPU wins
            if isinstance(reading, ProbeError) and gpu not in self.dead:
                self.dead[gpu] = result.lost[gpu] = str(reading)
        for gpu in sorted(self.gpus, key=lambda g: (g in avoid, self.in_flight[g], g)):
            if self.in_flight[gpu] >= self.settings.max_rounds_per_gpu:
                result.busy.append(gpu)
                continue
            reading = readings.get(gpu, ProbeError())  # absent: slot freed after the poll
            if isinstance(reading, ProbeError):
                continue
            reason = self._short(gpu, reading)
            if reason is None:
                result.gpu = gpu
                self.in_flight[gpu] += 1
                return result
            result.short[gpu] = reason
        return result

    def release(self, gpu: int) -> None:
        self.in_flight[gpu] -= 1
