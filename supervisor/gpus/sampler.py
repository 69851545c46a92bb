"""Writing GPU samples: ``SampleFile`` appends records (format in ``supervisor.gpus.samples``),
``Sampler`` reads every GPU every few seconds while rounds run and hands each reading to
the pool too (which learns round peaks from it). Never raises into the run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import anyio
import numpy as np

from supervisor.core import slots
from supervisor.gpus.probe import ProbeError, Reading
from supervisor.gpus.reads import read_gpus
from supervisor.gpus.pool import round_memory
from supervisor.logs import get_logger
from supervisor.gpus.samples import (
    CLUSTER_GPU_BASE, MAGIC, RECORD, ROUNDS_NAME, SamplesError, read_gpu_names,
    read_round_names, samples_path,
)
from supervisor.core.slots import GpuKey

SAMPLE_INTERVAL_S = 10.0
READ_TIMEOUT_S = 5.0
# The sampler's own thread limiter: a hung NVML call never holds a default-limiter token.
SAMPLER_THREADS = 64


class SampleFile:
    """Appends samples; the first append cuts off a record a kill left torn."""

    def __init__(self, exp_dir: Path) -> None:
        self.path = samples_path(exp_dir)
        self.names_path = self.path.with_name(ROUNDS_NAME)
        self.ids: dict[tuple[int, str], int] = {}  # (pid, round) -> id, this process
        self.next_id = 0  # 0: the files are not checked yet
        self.gpu_ids: dict[str, int] = {}  # a cluster GPU's key -> its record number

    def _prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < len(MAGIC):
                os.ftruncate(fd, 0)
                os.write(fd, MAGIC)
            elif os.pread(fd, len(MAGIC), 0) != MAGIC:
                raise SamplesError(f"{self.path}: not a GPU samples file")
            else:
                os.ftruncate(fd, size - (size - len(MAGIC)) % RECORD.itemsize)
        finally:
            os.close(fd)
        self.next_id = max(read_round_names(self.names_path), default=0) + 1
        self.ids.clear()
        self.gpu_ids = {key: n for n, key in read_gpu_names(self.names_path).items()}

    def _gpu_number(self, gpu: GpuKey, t: float, lines: list[dict[str, Any]]) -> int:
        if isinstance(gpu, int):
            return gpu
        if gpu not in self.gpu_ids:
            self.gpu_ids[gpu] = max(self.gpu_ids.values(), default=CLUSTER_GPU_BASE - 1) + 1
            lines.append({"gpu_id": self.gpu_ids[gpu], "gpu": gpu, "t": t})
        return self.gpu_ids[gpu]

    def append(self, t: float, readings: Mapping[GpuKey, Reading],
               rounds: Mapping[int, str]) -> int:
        """Write one sample of these readings; returns the records written. Blocking."""
        if not readings:
            return 0
        try:
            if not self.next_id:
                self._prepare()
            parts, lines = [], []
            for gpu, reading in sorted(readings.items(), key=lambda i: slots.order(i[0])):
                number = self._gpu_number(gpu, t, lines)
                memory = {}
                for pid, mib in round_memory(reading.processes, rounds).items():
                    key = (pid, rounds[pid])
                    if key not in self.ids:
                        self.ids[key], self.next_id = self.next_id, self.next_id + 1
                        lines.append({"id": self.ids[key], "pid": pid, "round": key[1], "t": t})
                    memory[self.ids[key]] = mib
                parts.append(records_for(t, number, reading, memory))
            if lines:  # names first, then the records that use them; the leading newline
                # ends a line a kill may have cut short (readers skip both)
                text = "".join("\n" + json.dumps(line) for line in lines) + "\n"
                _append(self.names_path, text.encode())
            rec = np.concatenate(parts)
            _append(self.path, rec.tobytes())
        except OSError:
            self.next_id = 0  # a short write (ENOSPC): cut it off before the next one
            raise
        return len(rec)


def records_for(t: float, gpu: int, reading: Reading, memory: Mapping[int, int]) -> np.ndarray:
    """One record per round id in ``memory`` (MiB), or one without a round."""
    ids = sorted(memory) or [0]
    rec = np.zeros(len(ids), RECORD)
    rec["t"], rec["gpu"], rec["round"] = t, gpu, ids
    rec["round_mib"] = [memory.get(i, 0) for i in ids]
    for key, value in (("util", reading.util_percent), ("used_mib", reading.used_mib),
                       ("total_mib", reading.total_mib)):
        rec[key] = -1 if value is None else value
    return rec


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab", buffering=0) as f:  # one write(2) at the end (O_APPEND)
        if f.write(data) != len(data):
            raise OSError(f"{path}: short write")


class Sampler:
    """Samples ``gpus()`` every ``interval_s``; ``rounds()`` maps each running round's process
    group leader pid to its name. A GPU that fails or hangs is skipped and logged once (a
    hung read is abandoned, and that GPU not read again until it returns); never raises."""

    def __init__(self, exp_dir: Path, probe: Any, gpus: Callable[[], Iterable[GpuKey]],
                 rounds: Callable[[], Mapping[int, str]], interval_s: float = SAMPLE_INTERVAL_S,
                 timeout_s: float = READ_TIMEOUT_S,
                 observe: Callable[[GpuKey, Reading], Any] | None = None) -> None:
        self.probe, self.gpus, self.rounds = probe, gpus, rounds
        self.observe = observe  # each reading also goes here (the pool learns peaks)
        self.interval_s, self.timeout_s = interval_s, min(timeout_s, interval_s)
        self.file = SampleFile(exp_dir)
        self.pending: set[GpuKey] = set()  # GPUs whose read is still in a thread
        self.warned: set[Any] = set()
        self.limiter = anyio.CapacityLimiter(SAMPLER_THREADS)
        self.no_nvml = False
        self.log = get_logger()

    async def run(self) -> None:
        """Sample until cancelled; returns at once when the probe has no NVML."""
        while not self.no_nvml:
            started = anyio.current_time()
            await self.sample_once()
            await anyio.sleep(max(0.0, self.interval_s - (anyio.current_time() - started)))
        self.log.info("gpu_samples_off", message="no NVML: GPU utilisation not sampled")

    async def sample_once(self) -> int:
        """Read every GPU (concurrently, each under the timeout) and append one sample."""
        # Daemon threads (gpus.read_gpus): a read stuck in NVML never delays exit.
        got = await read_gpus(self.probe, list(self.gpus()), self.timeout_s, self.pending)
        readings: dict[GpuKey, Reading] = {}
        for gpu, value in got.items():
            if isinstance(value, ProbeError):
                self._warn_once(gpu, "gpu_sample_failed", gpu=gpu, error=str(value))
            else:
                readings[gpu] = value
                if self.observe is not None:
                    self.observe(gpu, value)
        known = {g: r for g, r in readings.items()
                 if r.total_mib is not None or r.util_percent is not None}
        if readings and not known:
            self.no_nvml = True
            return 0
        try:
            return await anyio.to_thread.run_sync(
                self.file.append, round(time.time(), 3), known, dict(self.rounds()),
                abandon_on_cancel=True, limiter=self.limiter)
        except Exception as exc:  # a full disk, a foreign file: sampling is not the run
            self._warn_once("write", "gpu_samples_not_written", error=str(exc))
            return 0

    def _warn_once(self, key: Any, event: str, **fields: Any) -> None:
        if key not in self.warned:
            self.warned.add(key)
            self.log.warning(event, **fields)
