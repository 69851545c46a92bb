"""The GPU pool: an NVML probe behind a small interface, slots, free-memory admission.

Only NvmlProbe touches pynvml, and only when created, so CPU machines never need a driver.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import anyio
import anyio.from_thread
import anyio.lowlevel

from supervisor.config import GpuSettings
from supervisor.slots import GpuKey

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


def process_group(pid: int) -> int | None:
    """The process group of ``pid`` (/proc/PID/stat field 5), None if it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def round_memory(processes: Mapping[int, int], rounds: Mapping[int, Any]) -> dict[int, int]:
    """MiB per round leader pid (``rounds``' keys): main.py may be a child in the round's
    process group."""
    out: dict[int, int] = {}
    for pid, mib in processes.items():
        leader = pid if pid in rounds else process_group(pid)
        if leader in rounds:
            out[leader] = out.get(leader, 0) + mib
    return out


async def read_gpus(probe: Probe, gpus: Sequence[int], timeout_s: float,
                    busy: set[int]) -> dict[int, Reading | ProbeError]:
    """Read ``gpus`` concurrently, each in a daemon thread under ``timeout_s``.

    A read that does not return in time is abandoned (its thread may stay stuck in NVML
    for good, and must never block drain or exit: daemon threads do not); the GPU gets a
    ProbeError and stays in ``busy`` until the thread comes back.
    """
    results: dict[int, Reading | ProbeError] = {}
    token = anyio.lowlevel.current_token()
    done = {gpu: anyio.Event() for gpu in gpus if gpu not in busy}

    def work(gpu: int) -> None:
        try:
            value: Reading | ProbeError = probe.read(gpu)
        except ProbeError as exc:
            value = exc
        except Exception as exc:  # a probe bug must cost one reading, not the run
            value = ProbeError(f"reading GPU {gpu} failed ({type(exc).__name__}: {exc})")
        busy.discard(gpu)
        results.setdefault(gpu, value)
        try:
            anyio.from_thread.run_sync(done[gpu].set, token=token)
        except RuntimeError:  # the event loop is gone: nobody waits any more
            pass

    for gpu in done:
        busy.add(gpu)
        threading.Thread(target=work, args=(gpu,), daemon=True, name=f"nvml-{gpu}").start()
    with anyio.move_on_after(timeout_s):
        for event in done.values():
            await event.wait()
    late = ProbeError  # a read still running when the time is up
    return {gpu: results.get(gpu) or late(
        f"NVML did not answer for GPU {gpu} within gpu.nvml_timeout_s = {timeout_s:g}")
        for gpu in done}


class GpuPool:
    """Rounds in flight per GPU and free-memory admission that counts memory once.

    Each round in flight counts as the estimate (the footprint: the largest peak of a
    round that has ended; before one has, round_memory_mib or the largest peak seen so
    far), less what NVML already shows of it: that part is in NVML's free figure. NVML
    lists a round's process before its memory is there (seen on an H200: 14 MiB for the
    first ~0.1 s of a 2.6 GiB round), so a first sighting never ends the reservation.
    Which GPUs are healthy is the state machine's business, not the pool's.
    """

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
        self.gpus = list(chosen)
        self.rounds: dict[GpuKey, dict[str, int | None]] = {g: {} for g in chosen}  # name -> pgid
        self.footprint_mib: int | None = None  # largest peak of a round that has ended
        self.peak_mib: dict[str, int] = {}  # running round -> the most NVML showed of it
        self.reading_now: set[int] = set()  # GPUs whose read thread has not returned

    def add(self, gpu: GpuKey) -> None:
        """A cluster GPU that joined."""
        if gpu not in self.gpus:  # new, or back (a replaced worker, a node that rejoined)
            self.gpus.append(gpu)
        self.rounds.setdefault(gpu, {})

    def remove(self, gpu: GpuKey) -> None:
        """A cluster GPU that left: no new round; its rounds end as lost on their own."""
        if gpu in self.gpus:
            self.gpus.remove(gpu)

    def in_flight(self, gpu: GpuKey) -> int:
        return len(self.rounds.get(gpu, ()))

    def has_slot(self, gpu: GpuKey) -> bool:
        limit = self.settings.max_rounds_per_gpu
        return limit == "auto" or self.in_flight(gpu) < int(limit)

    def take(self, gpu: GpuKey, name: str) -> None:
        self.rounds.setdefault(gpu, {})[name] = None

    def started(self, gpu: GpuKey, name: str, pgid: int) -> None:
        if name in self.rounds.get(gpu, {}):
            self.rounds[gpu][name] = pgid

    def release(self, gpu: GpuKey, name: str) -> int | None:
        """The round ended: its peak (MiB, None if NVML never showed it) is learned."""
        self.rounds.get(gpu, {}).pop(name, None)
        peak = self.peak_mib.pop(name, None)
        if peak:
            self.footprint_mib = max(self.footprint_mib or 0, peak)
        return peak

    def estimate_mib(self) -> int:
        """What one round is expected to take at its peak."""
        if self.footprint_mib is not None:
            return self.footprint_mib
        return max([self.settings.round_memory_mib, *self.peak_mib.values()])

    def observe(self, gpu: GpuKey, reading: Reading) -> None:
        """Any reading of ``gpu`` (the sampler's too): peaks are learned from every one,
        not only from those taken while a round waits to start."""
        self._seen(gpu, reading)

    def _seen(self, gpu: GpuKey, reading: Reading) -> dict[str, int]:
        """MiB NVML shows per round of ``gpu`` (by process group), learning peaks."""
        groups = {pgid: name for name, pgid in self.rounds.get(gpu, {}).items() if pgid}
        seen = {groups[pgid]: mib for pgid, mib in round_memory(reading.processes,
                                                                groups).items()}
        for name, mib in seen.items():
            self.peak_mib[name] = max(self.peak_mib.get(name, 0), mib)
        return seen

    def shortage(self, gpu: GpuKey, reading: Reading) -> str | None:
        """Why ``gpu`` cannot take one more round now, or None if it can."""
        if not self.has_slot(gpu):
            return f"{self.in_flight(gpu)} round(s), max_rounds_per_gpu reached"
        if reading.free_mib is None:  # no memory checks: "auto" cannot pack, one each
            if self.settings.max_rounds_per_gpu == "auto" and self.in_flight(gpu):
                return "max_rounds_per_gpu = \"auto\" needs NVML's memory figures: one round"
            return None
        s = self.settings
        seen = self._seen(gpu, reading)
        estimate = self.estimate_mib()
        rounds = self.rounds.get(gpu, {})
        reserved = sum(max(0, estimate - seen.get(name, 0)) for name in rounds)
        need = max(s.min_free_mib, estimate) if s.max_rounds_per_gpu == "auto" \
            else s.min_free_mib
        available = reading.free_mib - reserved
        if available < need:
            return (f"{available} MiB available ({reading.free_mib} free - {reserved} reserved:"
                    f" {len(rounds)} x {estimate} less what NVML shows of them) < {need}")
        return None
