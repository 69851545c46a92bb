"""The dataset: one ``final.npz`` per object, columns ordered by (round_id, item_index).

``load(path)`` is also the API for training code: it returns a dict of numpy arrays.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from supervisor.storage.fsutil import atomic_write
from supervisor.dataset.validation import BUILTIN
from supervisor.dataset.results import (
    PROVENANCE_KEYS, QPOS_KEYS, QPOS_NAMES, SCALAR_KEYS, Columns,
)



class DatasetError(ValueError):
    """A final.npz cannot be read or does not have the dataset's schema."""


def empty_columns() -> Columns:
    cols: Columns = {k: np.zeros((0, len(QPOS_NAMES))) for k in QPOS_KEYS}
    cols.update({k: np.zeros(0) for k in SCALAR_KEYS})
    cols.update({k: np.zeros(0, dtype=np.int64) for k in PROVENANCE_KEYS})
    return cols


def digest(columns: Columns) -> str:
    """A digest of the grasps' arrays (names, dtypes, shapes, values), independent of the
    zip archive around them: what the manifest records of each final.npz it writes."""
    h = hashlib.sha256()
    for key in sorted(k for k in columns if k != "qpos_names"):
        arr = np.ascontiguousarray(columns[key])
        h.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def write(path: Path, columns: Columns) -> str:
    """Atomically replace ``path`` with these columns plus ``qpos_names``; returns their
    digest."""
    arrays = dict(columns)
    arrays["qpos_names"] = np.array(QPOS_NAMES)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return digest(columns)


def _check(path: Path, data: dict[str, np.ndarray]) -> None:
    missing = [k for k in (*QPOS_KEYS, *SCALAR_KEYS, *PROVENANCE_KEYS, "qpos_names")
               if k not in data]
    if missing:
        raise DatasetError(f"{path}: missing array(s) {', '.join(missing)}")
    if tuple(data["qpos_names"].tolist()) != QPOS_NAMES:
        raise DatasetError(f"{path}: qpos_names are not the 28 joint names in order")
    n = len(data["energy"])
    for key, arr in data.items():
        if key == "qpos_names":
            continue
        shape = (n, len(QPOS_NAMES)) if key in QPOS_KEYS else (n,)
        kinds = "i" if key in PROVENANCE_KEYS else _KINDS.get(key, "biufU")
        if key not in _KNOWN:  # a newer main.py's, or a validator's: numbers, flags, text
            shape = (n, *arr.shape[1:])
        if arr.shape != shape or arr.dtype.kind not in kinds:
            raise DatasetError(f"{path}: {key} has shape {arr.shape} and dtype {arr.dtype}, "
                               f"expected {shape} of kind {kinds!r}")
    order = np.lexsort((data["item_index"], data["round_id"]))
    if not np.array_equal(order, np.arange(n)):
        raise DatasetError(f"{path}: grasps are not ordered by (round_id, item_index)")
    pairs = data["round_id"] * (2**32) + data["item_index"]
    if len(np.unique(pairs)) != n:
        raise DatasetError(f"{path}: duplicate (round_id, item_index) pairs")


# the kinds of the grasps' own arrays and of [validate]'s built-in figures; other arrays
# (a newer main.py's, a validator command's) may hold numbers, booleans or text
_KINDS = {**BUILTIN, **{k: "f" for k in SCALAR_KEYS}}
_KNOWN = frozenset({*QPOS_KEYS, *SCALAR_KEYS, *PROVENANCE_KEYS})


def load(path: str | Path) -> dict[str, np.ndarray]:
    """Load and check a final.npz: per-grasp arrays plus ``qpos_names``."""
    path = Path(path)
    if path.is_file() and not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: unreadable: not a final.npz (not a zip archive of arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DatasetError(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
    _check(path, data)
    return data


def grasp_columns(data: dict[str, np.ndarray]) -> Columns:
    return {k: v for k, v in data.items() if k != "qpos_names"}


class Accumulator:
    """An object's accepted grasps per round, in memory, waiting to be written."""

    def __init__(self) -> None:
        self.rounds: dict[int, Columns] = {}
        self.partial_keys: set[str] = set()  # extra keys that some rounds lack

    @classmethod
    def from_columns(cls, columns: Columns) -> Accumulator:
        acc = cls()
        rids = columns["round_id"]
        for rid in np.unique(rids):
            acc.rounds[int(rid)] = {k: v[rids == rid] for k, v in columns.items()}
        return acc

    def add(self, round_id: int, columns: Columns) -> None:
        self.rounds[round_id] = columns

    def build(self, used: dict[int, int] | None = None) -> Columns:
        """Concatenate in round order; ``used`` keeps only the first n grasps of each round."""
        parts = []
        for rid in sorted(self.rounds):
            if used is not None and rid not in used:
                continue
            cols = self.rounds[rid]
            parts.append(cols if used is None else {k: v[: used[rid]] for k, v in cols.items()})
        if not parts:
            return empty_columns()
        every = set.intersection(*(set(p) for p in parts))
        extra = set.union(*(set(p) for p in parts)) - every
        self.partial_keys |= extra
        out = {k: np.concatenate([p[k] for p in parts]) for k in sorted(every)}
        for key in sorted(extra):  # a newer main.py's key in some rounds: NaN elsewhere
            out[key] = np.concatenate([p.get(key, np.full(len(p["energy"]), np.nan))
                                       for p in parts])
        return out
