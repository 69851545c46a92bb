"""How good and how diverse an object's grasps are: energy quantiles, how many grasps a
quality-filter threshold (``[filter] max_<key>``) would keep, and the distance from each
grasp to its nearest other grasp in dedup's units (scaled Chebyshev, 1.0 = exactly at the
``[dedup]`` tolerances, see ``supervisor.dataset.dedup``). Pure functions over arrays;
``python -m supervisor dataset-info`` (``supervisor.commands.dataset_info``) prints them.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from supervisor.config.schema import DedupSettings
from supervisor.dataset.dedup import dedup_mask, nearest_distances
from supervisor.dataset.results import SCALAR_KEYS

QUANTILES = (("min", 0.0), ("p5", 0.05), ("median", 0.5), ("p95", 0.95), ("max", 1.0))
NN_LEVELS = (1.0, 2.0, 4.0)
NN_CAP = 8.0  # past this the search costs more than it tells: reported as "> 8"
LADDER_SIZE = 5
ENERGY_KEYS = tuple(k for k in SCALAR_KEYS if k != "scale")

Data = Mapping[str, np.ndarray]


def energy_keys(data: Data) -> list[str]:
    extra = sorted(k for k in data if k.startswith("E_") and k not in ENERGY_KEYS
                   and np.asarray(data[k]).ndim == 1)
    return [k for k in ENERGY_KEYS if k in data] + extra


def quantiles(values: np.ndarray) -> dict[str, float | None]:
    """min, p5, median, p95, max of the finite values (a key newer rounds added is NaN
    in older ones); None when there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return {name: None for name, _ in QUANTILES}
    return {name: float(np.quantile(values, q)) for name, q in QUANTILES}


def threshold_ladder(values: np.ndarray, size: int = LADDER_SIZE) -> list[float]:
    """Round 1-2-5 thresholds spread over the bulk (p5..p95) of the positive values."""
    positive = np.asarray(values, dtype=np.float64)
    positive = positive[positive > 0]
    if len(positive) == 0:
        return [0.0]
    lo, hi = np.quantile(positive, [0.05, 0.95])
    top = math.ceil(math.log10(hi)) + 1
    steps = [m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, top) for m in (1, 2, 5)]
    inside = [float(f"{s:.1g}") for s in steps if lo <= s <= hi]
    if len(inside) < 3:  # a narrow spread: the steps just around it
        below = [s for s in steps if s < lo][-1:]
        above = [s for s in steps if s > hi][:1]
        inside = [float(f"{s:.1g}") for s in below + inside + above]
    picks = np.unique(np.linspace(0, len(inside) - 1, min(size, len(inside))).round())
    return [inside[int(i)] for i in picks]


def filter_counts(data: Data, extra: Mapping[str, float] | None = None
                  ) -> dict[str, list[dict[str, float | int]]]:
    """For each ``max_<key>``: grasps kept (value <= threshold) at a few thresholds."""
    out: dict[str, list[dict[str, float | int]]] = {}
    for key in energy_keys(data):
        values = np.asarray(data[key], dtype=np.float64)
        limits = set(threshold_ladder(values))
        if extra and key in extra:
            limits.add(float(extra[key]))
        out[f"max_{key}"] = [{"threshold": t, "kept": int((values <= t).sum())}
                             for t in sorted(limits)]
    return out


def neighbour_summary(distances: np.ndarray, cap: float = NN_CAP) -> dict[str, Any]:
    """Quantiles of nearest-neighbour distances (None: beyond ``cap``), counts within."""
    q: dict[str, float | None] = {name: None for name, _ in QUANTILES}
    if len(distances):
        # Actual sample values ("nearest"), so that no quantile interpolates towards inf.
        finite = np.where(np.isinf(distances), np.finfo(np.float64).max, distances)
        q = {name: float(np.quantile(finite, at, method="nearest")) for name, at in QUANTILES}
        q = {name: (None if v > cap else v) for name, v in q.items()}
    within = {f"{level:g}": int((distances <= level).sum()) for level in NN_LEVELS}
    return {"cap": cap, "quantiles": q, "within": within}


def summarize(data: Data, settings: DedupSettings, extra: Mapping[str, float] | None = None,
              cap: float = NN_CAP, distances: np.ndarray | None = None) -> dict[str, Any]:
    """One object's summary; ``data`` as supervisor.dataset.load returns it."""
    if distances is None:
        distances = nearest_distances(data, settings, cap)
    return {
        "count": int(len(data["energy"])),
        "energies": {k: quantiles(data[k]) for k in energy_keys(data)},
        "filters": filter_counts(data, extra),
        "nearest_neighbour": neighbour_summary(distances, cap),
        "dedup_keeps": int(dedup_mask(data, settings).sum()),
    }


def summarize_all(datas: Sequence[Data], summaries: Sequence[Mapping[str, Any]],
                  distances: Sequence[np.ndarray], extra: Mapping[str, float] | None = None,
                  cap: float = NN_CAP) -> dict[str, Any]:
    """All objects pooled: ``datas`` (energy columns suffice), each object's ``summarize``
    and nearest-neighbour ``distances`` (neighbours never cross objects)."""
    keys = [k for k in energy_keys(datas[0]) if all(k in d for d in datas)]
    pooled = {k: np.concatenate([d[k] for d in datas]) for k in keys}
    return {
        "objects": len(datas),
        "count": int(sum(len(d["energy"]) for d in datas)),
        "energies": {k: quantiles(pooled[k]) for k in keys},
        "filters": filter_counts(pooled, extra),
        "nearest_neighbour": neighbour_summary(np.concatenate(list(distances)), cap),
        "dedup_keeps": int(sum(s["dedup_keeps"] for s in summaries)),
    }
