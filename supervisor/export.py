"""Export datasets to BimanGrasp's own result format, and read that format back.

``{object_code}.npy`` as main.py writes it: ``np.save`` of a list of dicts with float
values and qpos dicts of the 28 joint names in order, so existing visualisation and
validation scripts read it unchanged. ``__meta__`` carries the provenance (object code,
item index, seed, round id), which makes export then re-import lossless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from supervisor import dataset, paths
from supervisor.config import Config
from supervisor.records import ObjectStatus
from supervisor.state import State
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


def export(config: Config, state: State, out: Path) -> Iterator[tuple[str, bool]]:
    """Write ``out/{code}.npy`` for every object with grasps; yields (line, ok) per
    object. A final.npz that is missing, unreadable or not what the manifest recorded is
    not exported: the line says so and how to repair it."""
    hint = f"repair with: {config.command('recover')}"
    for code in state.order:
        obj = state.objects[code]
        source = paths.final(config.exp_dir, code)
        if not source.exists():
            if obj.collected:
                yield f"{code}: {source} is missing but held {obj.collected} grasps; {hint}", False
            continue
        try:
            columns = dataset.grasp_columns(dataset.load(source))
        except dataset.DatasetError as exc:
            yield f"{code}: not exported: {exc}; {hint}", False
            continue
        n = len(columns["energy"])
        if n != obj.collected:
            yield (f"{code}: not exported: {source} holds {n} grasps, the manifest recorded "
                   f"{obj.collected}; {hint}"), False
            continue
        items = to_legacy(columns, code)
        target = out / f"{code}.npy"
        atomic_write(target, lambda f, a=items: np.save(f, a, allow_pickle=True))
        done = "" if obj.status == ObjectStatus.DONE else " (object not done yet)"
        yield f"{code}: {n} grasps -> {target}{done}", True
