"""GPU samples: utilisation and memory of each GPU, taken every few seconds while rounds run
(by ``supervisor.gpus.sampler``); this module holds the format and reads it.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from supervisor.storage import paths
from supervisor.core import slots
from supervisor.core.slots import GpuKey

SAMPLES_NAME = paths.SAMPLES_NAME
ROUNDS_NAME = "gpu_samples.rounds.jsonl"
MAGIC = b"gpusmp1\n"
RECORD = np.dtype([
    ("t", "<f8"), ("gpu", "<u2"),  # epoch seconds, GPU index
    ("util", "<i2"), ("used_mib", "<i4"), ("total_mib", "<i4"),  # -1: unknown
    ("round", "<i4"), ("round_mib", "<i4"),  # id in ROUNDS_NAME (0: none), its GPU memory
])
CLUSTER_GPU_BASE = 1 << 15  # record numbers of a cluster's GPUs, named in ROUNDS_NAME


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
