"""GPU samples: utilisation and memory of each GPU, taken every few seconds while rounds run.

``gpu_samples.bin``, beside the manifest: an 8-byte header, then 28-byte records
(``RECORD``), one per GPU per sample (one more per further round sharing the GPU then),
appended with one ``write`` per sample. At the default 10 s, a week on 8 GPUs is 8 x 60,480
records = 13.5 MB. ``gpu_samples.rounds.jsonl`` names the rounds that records refer to,
one line per round, and a cluster's GPUs (``"HOST/NODE/gpuN"``, whose records carry
a number from ``CLUSTER_GPU_BASE`` up), one line per GPU. A record or line cut short by
a kill is ignored by readers and cut off by the next sampler. Readers never lock. Without
NVML nothing is written.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import anyio
import numpy as np

from supervisor import paths, slots
from supervisor.gpus import ProbeError, Reading, read_gpus
from supervisor.logs import get_logger
from supervisor.slots import GpuKey

SAMPLES_NAME = paths.SAMPLES_NAME
ROUNDS_NAME = "gpu_samples.rounds.jsonl"
MAGIC = b"gpusmp1\n"
RECORD = np.dtype([
    ("t", "<f8"), ("gpu", "<u2"),  # epoch seconds, GPU index
    ("util", "<i2"), ("used_mib", "<i4"), ("total_mib", "<i4"),  # -1: unknown
    ("round", "<i4"), ("round_mib", "<i4"),  # id in ROUNDS_NAME (0: none), its GPU memory
])
CLUSTER_GPU_BASE = 1 << 15  # record numbers of a cluster's GPUs, named in ROUNDS_NAME
SAMPLE_INTERVAL_S = 10.0
READ_TIMEOUT_S = 5.0
# The sampler's own thread limiter: a hung NVML call never holds a default-limiter token.
SAMPLER_THREADS = 64


class SamplesError(ValueError):
    """gpu_samples.bin is not a samples file (it is never overwritten then)."""


def samples_path(exp_dir: Path) -> Path:
    return paths.samples(exp_dir)


def read_records(path: Path) -> np.ndarray:
    """Every whole record of ``path`` (none when it is missing or holds only a header)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except FileNotFoundError:
        head = b""
    if len(head) < len(MAGIC):  # none yet, or cut while being created
        return np.zeros(0, RECORD)
    if head != MAGIC:
        raise SamplesError(f"{path}: not a GPU samples file")
    return np.fromfile(path, RECORD, count=(size - len(MAGIC)) // RECORD.itemsize,
                       offset=len(MAGIC))


def _names(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        lines = []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # torn by a kill, or empty
        if isinstance(entry, dict):
            out.append(entry)
    return out


def read_round_names(path: Path) -> dict[int, dict[str, Any]]:
    """id -> {"id", "pid", "round", "t"} of ROUNDS_NAME; torn or foreign lines skipped."""
    out = {}
    for entry in _names(path):
        try:
            out[int(entry["id"])] = {**entry, "round": str(entry["round"])}
        except (ValueError, KeyError, TypeError):
            continue
    return out


def read_gpu_names(path: Path) -> dict[int, str]:
    """Record number -> a cluster GPU's key, from ROUNDS_NAME."""
    out = {}
    for entry in _names(path):
        try:
            out[int(entry["gpu_id"])] = str(entry["gpu"])
        except (ValueError, KeyError, TypeError):
            continue
    return out


@dataclass(frozen=True)
class Samples:
    # gpu -> {"t", "util_percent" (float, NaN unknown), "used_mib", "total_mib"}, by time
    gpus: dict[GpuKey, dict[str, np.ndarray]]
    round_peak_mib: dict[str, int]  # round name -> the most GPU memory sampled for it


def load(path: Path) -> Samples:
    """The samples of ``path`` (a gpu_samples.bin) as arrays per GPU and peaks per round."""
    rec = read_records(path)
    t, gpu = rec["t"], np.ascontiguousarray(rec["gpu"])
    # Several records of one GPU in one sample (rounds sharing it; written together).
    first = np.ones(len(rec), bool)
    first[1:] = (t[1:] != t[:-1]) | (gpu[1:] != gpu[:-1])
    gpus: dict[GpuKey, dict[str, np.ndarray]] = {}
    run_ids, run_max = [], []
    named = read_gpu_names(path.with_name(ROUNDS_NAME)) if (gpu >= CLUSTER_GPU_BASE).any() \
        else {}
    for g in np.unique(gpu).tolist():
        idx = np.flatnonzero(gpu == g)
        keep = idx[first[idx]]
        util = rec["util"][keep]
        gpus[named.get(g, g)] = {"t": t[keep], "used_mib": rec["used_mib"][keep],
                   "util_percent": np.where(util < 0, np.nan, util.astype(float)),
                   "total_mib": rec["total_mib"][keep]}
        ids = rec["round"][idx]  # a round's samples are runs on its GPU: max of each run
        runs = np.flatnonzero(np.diff(ids, prepend=-1))
        run_ids.append(ids[runs])
        run_max.append(np.maximum.reduceat(rec["round_mib"][idx], runs))
    peaks: dict[str, int] = {}
    ids = np.concatenate(run_ids or [np.zeros(0, np.int32)])
    if ids.any():
        best = np.full(int(ids.max()) + 1, -1, np.int64)
        np.maximum.at(best, ids, np.concatenate(run_max))
        for rid, entry in read_round_names(path.with_name(ROUNDS_NAME)).items():
            if 0 < rid < len(best) and best[rid] >= 0:
                peaks[entry["round"]] = max(peaks.get(entry["round"], 0), int(best[rid]))
    return Samples(gpus, peaks)


def latest_and_mean(exp_dir: Path) -> dict[str, Any]:
    """For ``status``: each GPU's latest sample and the mean utilisation of every sample."""
    try:
        gpus = load(samples_path(exp_dir)).gpus
    except SamplesError:  # someone else's file: status shows "not sampled", not a traceback
        gpus = {}
    latest = []
    for g, a in sorted(gpus.items(), key=lambda i: slots.order(i[0])):
        util = float(a["util_percent"][-1])
        latest.append({"gpu": g, "at": float(a["t"][-1]),
                       "util_percent": None if math.isnan(util) else int(util),
                       "used_mib": int(a["used_mib"][-1]), "total_mib": int(a["total_mib"][-1])})
    return {"sampled": bool(gpus), "gpus": latest, "mean_util_percent": mean_util(gpus),
            "samples": sum(len(a["t"]) for a in gpus.values())}


def mean_util(gpus: Mapping[GpuKey, Mapping[str, np.ndarray]]) -> float | None:
    """Mean utilisation over every sample of every GPU (samples are evenly spaced)."""
    utils = np.concatenate([a["util_percent"] for a in gpus.values()] or [np.zeros(0)])
    utils = utils[~np.isnan(utils)]
    return round(float(utils.mean()), 1) if len(utils) else None


def round_memory(processes: Mapping[int, int], rounds: Mapping[int, str]) -> dict[int, int]:
    """MiB per round leader pid: main.py may be a child in the round's process group."""
    out: dict[int, int] = {}
    for pid, mib in processes.items():
        leader = pid if pid in rounds else process_group(pid)
        if leader in rounds:
            out[leader] = out.get(leader, 0) + mib
    return out


def process_group(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


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
