"""The report's arrays: energies read straight from the final.npz archives, histograms
that show the bulk and the threshold, time series merged down and cut at pauses."""

from __future__ import annotations

import io
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from supervisor.commands.report.data import ENERGY_TERMS
from supervisor.storage import paths


def energies(exp_dir: Path, codes: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """Each energy term over every delivered grasp (float32), and how many final.npz files
    could not be read (a live run replaces them atomically: never half-written)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ENERGY_TERMS}
    unreadable = 0
    for code in codes:
        path = paths.final(exp_dir, code)
        if not path.exists():
            continue
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
                cols = {k: _column(zf, k) for k in ENERGY_TERMS if f"{k}.npy" in names}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            unreadable += 1
            continue
        for k, v in cols.items():
            parts[k].append(v.astype(np.float32))
    return {k: np.concatenate(v) for k, v in parts.items() if v}, unreadable


NPY_F8 = re.compile(rb"\{'descr': '<f8', 'fortran_order': False, 'shape': \((\d+),\), \}")


def _column(zf: zipfile.ZipFile, key: str) -> np.ndarray:
    """One array of an npz; float64 columns without numpy's header parser (3x faster)."""
    data = zf.read(f"{key}.npy")
    if data[:8] == b"\x93NUMPY\x01\x00":
        size = int.from_bytes(data[8:10], "little")
        match = NPY_F8.match(data[10:10 + size])
        if match:
            return np.frombuffer(data, "<f8", count=int(match[1]), offset=10 + size)
    return np.lib.format.read_array(io.BytesIO(data))


def histogram(values: np.ndarray, threshold: float | None,
              bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Counts over a range that shows the bulk and the threshold; outliers go to the end
    bins (a few huge energies would otherwise squeeze everything into one bar)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return np.zeros(bins + 1), np.zeros(bins, int)
    lo, hi = float(np.quantile(values, 0.001)), float(np.quantile(values, 0.999))
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(np.clip(values, lo, hi), edges)
    return edges, counts


def downsample(t: np.ndarray, *series: np.ndarray, points: int = 1500,
               peak: tuple[bool, ...] = ()) -> list[np.ndarray]:
    """Consecutive samples merged down to at most ``points``: the mean of each bucket, or
    its maximum where ``peak`` says so; NaN (unknown) values are left out."""
    n = len(t)
    k = max(1, math.ceil(n / points))
    if k == 1:
        return [t, *series]
    starts = np.arange(0, n, k)
    bucket = np.arange(n) // k
    out = [t[starts]]
    for i, s in enumerate(series):
        values = s.astype(float)
        known = ~np.isnan(values)
        if i < len(peak) and peak[i]:
            out.append(np.fmax.reduceat(values, starts))
        else:
            total = np.bincount(bucket, np.where(known, values, 0.0))
            count = np.bincount(bucket, known.astype(float))
            out.append(np.divide(total, count, out=np.full(len(starts), np.nan),
                                 where=count > 0))
    return out


def with_gaps(t: np.ndarray, *series: np.ndarray) -> list[np.ndarray]:
    """A NaN in each pause of sampling (the supervisor stopped), so lines do not bridge it."""
    if len(t) < 3:
        return [t, *series]
    steps = np.diff(t)
    cut = np.flatnonzero(steps > 5 * np.median(steps)) + 1
    return [np.insert(t, cut, t[cut - 1] + steps[cut - 1] / 2)] + [
        np.insert(s.astype(float), cut, np.nan) for s in series]
