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

from supervisor.dataset import integrity
from supervisor.config.schema import Config
from supervisor.core.records import ObjectStatus
from supervisor.core.state import State
from supervisor.storage.fsutil import atomic_write
from supervisor.dataset.results import (
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


def from_legacy(path: Path) -> dict[str, np.ndarray]:
    """Read a legacy file back into the arrays ``dataset.load`` gives for a final.npz:
    the columns, the provenance (from ``__meta__``) and ``qpos_names`` (the qpos dicts'
    keys, which ``to_columns`` checks are the 28 joint names in order)."""
    items = load_items(path)
    columns = to_columns(items, None)
    for key in PROVENANCE_KEYS:
        columns[key] = np.array([item.get(META_KEY, {}).get(key, -1) for item in items],
                                dtype=np.int64)
    return {**columns, "qpos_names": np.array(QPOS_NAMES)}  # as final.write stores them


def export(config: Config, state: State, out: Path,
           include_unlisted: bool = False) -> Iterator[tuple[str, bool]]:
    """Write ``out/{code}.npy`` for every object with grasps; yields (line, ok) per
    object. A final.npz that is not what the manifest records (missing, unreadable,
    another object's, altered: ``supervisor.dataset.integrity``) is not exported: the line says
    so and how to repair it. Objects that the config no longer lists are exported only
    with ``include_unlisted``."""
    listed = set(config.object_codes)
    unlisted = [c for c in state.objects if c not in listed]
    for code in [*state.order, *(unlisted if include_unlisted else ())]:
        obj = state.objects[code]
        finding = integrity.check(config, state, code, deep=True)
        if not finding.usable:
            yield (f"{code}: not exported: {finding.problem}; "
                   f"{integrity.advice(config, state, code, finding)}"), False
            continue
        if finding.data is None:
            yield f"{code}: nothing to export yet (no final.npz written)", True
            continue
        columns = finding.data
        n = len(columns["energy"])
        items = to_legacy(columns, code)
        target = out / f"{code}.npy"
        atomic_write(target, lambda f, a=items: np.save(f, a, allow_pickle=True))
        done = "" if obj.status == ObjectStatus.DONE else f" (object {obj.status}, not done)"
        if code not in listed:
            done += " (not in the current list)"
        yield f"{code}: {n} grasps -> {target}{done}", True
    if unlisted and not include_unlisted:
        yield (f"not exported: {len(unlisted)} object(s) not in the current list "
               f"({', '.join(unlisted[:5])}{', ...' if len(unlisted) > 5 else ''}); add "
               f"--include-unlisted to export them too"), True
