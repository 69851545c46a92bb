"""The GPU pool: rounds in flight per GPU, and free-memory admission that counts each
round's memory once; which process group a GPU process belongs to.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from supervisor.config.schema import GpuSettings
from supervisor.core import slots
from supervisor.core.slots import GpuKey
from supervisor.gpus.probe import GpuError, Probe, Reading


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


def wait_cause(reason: str) -> str:
    """A shortage's reason without its figures (``MiB available ( free) <  needed``):
    what a wait is for, which changes less often than the figures do."""
    return "".join(c for c in reason if not c.isdigit() and c != "-")


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
        # "auto": the rounds a card may hold now (supervisor.core.packing), or None
        self.level_of: Callable[[GpuKey], int | None] = lambda gpu: None
        self.last: dict[GpuKey, Reading] = {}  # each GPU's latest reading
        self.shared: set[str] = set()  # rounds that had company on their card
        # cards where a round ran out of memory -> the MiB free after it: until a round
        # ends well there, a round is admitted only with more free than that, and with
        # what a round is expected to take (a fixed max_rounds_per_gpu too), so a card
        # that another job fills is not fed the same OOM again and again
        self.tight: dict[GpuKey, int] = {}
        # "auto": until when (monotonic) a card takes one round fewer than its level, so
        # that its places do not run in step (supervisor.gpus.meter.HOLD)
        self.held_back: dict[GpuKey, float] = {}

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
        if limit == "auto":
            level = self.level_of(gpu)
            if level is not None and time.monotonic() < self.held_back.get(gpu, 0.0):
                level -= 1
            return level is None or self.in_flight(gpu) < level
        return self.in_flight(gpu) < int(limit)

    def hold_back(self, gpu: GpuKey, seconds: float) -> None:
        """One place of ``gpu`` waits ``seconds`` before its next round."""
        self.held_back[gpu] = time.monotonic() + seconds

    def take(self, gpu: GpuKey, name: str) -> None:
        rounds = self.rounds.setdefault(gpu, {})
        if rounds:
            self.shared.update([*rounds, name])
        rounds[name] = None

    def alone(self, name: str) -> bool:
        """No other round shared its card while it ran (so far)."""
        return name not in self.shared

    def started(self, gpu: GpuKey, name: str, pgid: int) -> None:
        if name in self.rounds.get(gpu, {}):
            self.rounds[gpu][name] = pgid

    def unfinished(self, name: str) -> None:
        """The round did not run to its end (out of memory, failed): its peak is not a
        round's footprint, and is not learned when it is released."""
        self.peak_mib.pop(name, None)

    def out_of_memory(self, gpu: GpuKey, free_mib: int | None) -> None:
        self.tight[gpu] = max(self.tight.get(gpu, 0), free_mib or 0)

    def release(self, gpu: GpuKey, name: str) -> int | None:
        """The round ended: its peak (MiB, None if NVML never showed it) is learned."""
        self.rounds.get(gpu, {}).pop(name, None)
        self.shared.discard(name)
        peak = self.peak_mib.pop(name, None)
        if peak:
            self.footprint_mib = max(self.footprint_mib or 0, peak)
            self.tight.pop(gpu, None)  # a round ran to its end here
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

    def _ours(self, gpu: GpuKey, reading: Reading) -> dict[str, int]:
        """MiB NVML shows per round of ``gpu`` (by process group)."""
        groups = {pgid: name for name, pgid in self.rounds.get(gpu, {}).items() if pgid}
        return {groups[pgid]: mib for pgid, mib in round_memory(reading.processes,
                                                                groups).items()}

    def _seen(self, gpu: GpuKey, reading: Reading) -> dict[str, int]:
        """MiB NVML shows per round of ``gpu``, learning peaks."""
        self.last[gpu] = reading
        seen = self._ours(gpu, reading)
        for name, mib in seen.items():
            self.peak_mib[name] = max(self.peak_mib.get(name, 0), mib)
        return seen

    def closed(self, gpu: GpuKey) -> bool:
        """``gpu`` could not take a round even once our rounds there have ended (another
        user's job holds its memory, or it is too small), by its latest reading; a card
        not read yet, or without memory figures, is open. A retry does not wait for it."""
        reading = self.last.get(gpu)
        if reading is None or reading.free_mib is None:
            return False
        ours = sum(self._ours(gpu, reading).values())
        return reading.free_mib + ours < self._need()[0]

    def shortage(self, gpu: GpuKey, reading: Reading) -> str | None:
        """Why ``gpu`` cannot take one more round now, or None if it can."""
        if not self.has_slot(gpu):
            return f"{self.in_flight(gpu)} round(s), max_rounds_per_gpu reached"
        return self._memory_shortage(gpu, reading)

    def _need(self) -> tuple[int, str, str]:
        """What a card must have free to take a round, what says so, and what to change:
        ``min_free_mib``, and at least what a round is expected to take at its peak (the
        learned footprint once a round has ended), with a fixed max_rounds_per_gpu too: a
        round started with less runs out of memory."""
        s = self.settings
        estimate = self.estimate_mib()
        if s.min_free_mib >= estimate:
            return (s.min_free_mib, f"[gpu] min_free_mib = {s.min_free_mib}",
                    "lower [gpu] min_free_mib")
        if self.footprint_mib is None and estimate == s.round_memory_mib:
            return (estimate, f"[gpu] round_memory_mib = {estimate}, what one round is "
                              f"expected to take at its peak",
                    "lower [gpu] round_memory_mib if rounds take less, or round_batch_size")
        return (estimate, f"the largest peak of a round so far ({estimate} MiB)",
                "lower round_batch_size")

    def need_mib(self) -> tuple[int, str]:
        """What a card must have free to take a round, and what says so."""
        need, why, _ = self._need()
        return need, why

    def need(self) -> str:
        """``a round needs 6000 MiB free (why): what to change``, for a card too small."""
        need, why, fix = self._need()
        return f"a round needs {need} MiB free ({why}): {fix}"

    def too_small(self, gpu: GpuKey, reading: Reading) -> str | None:
        """``GPU 1 has 40000 MiB in all``, when even empty it could not take a round."""
        if reading.total_mib is None or reading.total_mib >= self._need()[0]:
            return None
        return f"{slots.label(gpu)} has {reading.total_mib} MiB in all"

    def room(self, gpu: GpuKey) -> bool:
        """Memory admits one more round on ``gpu`` now (its latest reading)."""
        reading = self.last.get(gpu)
        return reading is not None and reading.free_mib is not None and \
            self._memory_shortage(gpu, reading) is None

    def _memory_shortage(self, gpu: GpuKey, reading: Reading) -> str | None:
        if reading.free_mib is None:  # no memory checks: "auto" cannot pack, one each
            if self.settings.max_rounds_per_gpu == "auto" and self.in_flight(gpu):
                return "max_rounds_per_gpu = \"auto\" needs NVML's memory figures: one round"
            return None
        seen = self._seen(gpu, reading)
        estimate = self.estimate_mib()
        rounds = self.rounds.get(gpu, {})
        reserved = sum(max(0, estimate - seen.get(name, 0)) for name in rounds)
        need = self._need()[0]
        if gpu in self.tight:
            need = max(need, estimate, self.tight[gpu] + 1)
        available = reading.free_mib - reserved
        if available < need:
            held = (f"{reading.free_mib} free - {reserved} reserved: {len(rounds)} x {estimate} "
                    f"less what NVML shows of them" if rounds else f"{reading.free_mib} free")
            why = "; a round ran out of memory here" if gpu in self.tight else ""
            return f"{available} MiB available ({held}) < {need} needed{why}"
        return None
