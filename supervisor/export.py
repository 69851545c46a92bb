"""Export datasets to BimanGrasp's own result format, and read that format back.

``{object_code}.npy`` as main.py writes it: ``np.save`` of a list of dicts with float
values and qpos dicts of the 28 joint names in order, so existing visualisation and
validation scripts read it unchanged. ``__meta__`` carries the provenance (object code,
item index, seed, round id), which makes export then re-import lossless.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from supervisor import dataset
from supervisor.fsutil import atomic_write
from supervisor.results import (
    META_KEY, PROVENANCE_KEYS, QPOS_KEYS, QPOS_NAMES, Columns, load_items, to_columns,
)

# main.py's key order: scale, then final and starting poses per hand, then energies.
LEGACY_ORDER = ("scale", "qpos_left", "qpos_left_st", "qpos_right", "qpos_right_st",
                "energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints")


def to_legacy(columns: Columns, object_code: str) -> np.ndarray:
    known = set(LEGACY_ORDER) | set(PROVENANCE_KEYS) | {"qpos_names"}
    extras = sorted(k for k in columns if k not in known)
    lists = {k: columns[k].tolist() for k in (*LEGACY_ORDER, *extras, *PROVENANCE_KEYS)}
    items = []
    for j in range(len(columns["energy"])):
        item: dict = {}
        for key in (*LEGACY_ORDER, *extras):
            value = lists[key][j]
            item[key] = dict(zip(QPOS_NAMES, value)) if key in QPOS_KEYS else value
        item[META_KEY] = {"object_code": object_code, "item_index": lists["item_index"][j],
                          "seed": lists["seed"][j], "round_id": lists["round_id"][j]}
        items.append(item)
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def from_legacy(path: Path) -> Columns:
    """Read a legacy file back into dataset columns (provenance from ``__meta__``)."""
    items = load_items(path)
    columns = to_columns(items, None)
    for key in PROVENANCE_KEYS:
        columns[key] = np.array([item.get(META_KEY, {}).get(key, -1) for item in items],
                                dtype=np.int64)
    return columns


def export(exp_dir: Path, codes: list[str], out: Path) -> list[tuple[str, Path, int]]:
    """Write ``out/{code}.npy`` for every object with a final.npz; returns what was written."""
    written = []
    for code in codes:
        source = dataset.final_path(exp_dir, code)
        if not source.exists():
            continue
        items = to_legacy(dataset.grasp_columns(dataset.load(source)), code)
        target = out / f"{code}.npy"
        atomic_write(target, lambda f, a=items: np.save(f, a, allow_pickle=True))
        written.append((code, target, len(items)))
    return written

