"""Round results: read one round's ``{object_code}.npy``, validate it, turn it into columns.

A result file is main.py's ``np.save(path, list_of_dicts, allow_pickle=True)``. Anything
else (truncated, wrong type, missing keys, NaN, wrong length) raises ResultError with a
precise reason; such a round is never merged.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping

import numpy as np

QPOS_NAMES = (
    "robot0:FFJ3", "robot0:FFJ2", "robot0:FFJ1", "robot0:FFJ0",
    "robot0:MFJ3", "robot0:MFJ2", "robot0:MFJ1", "robot0:MFJ0",
    "robot0:RFJ3", "robot0:RFJ2", "robot0:RFJ1", "robot0:RFJ0",
    "robot0:LFJ4", "robot0:LFJ3", "robot0:LFJ2", "robot0:LFJ1", "robot0:LFJ0",
    "robot0:THJ4", "robot0:THJ3", "robot0:THJ2", "robot0:THJ1", "robot0:THJ0",
    "WRJRx", "WRJRy", "WRJRz", "WRJTx", "WRJTy", "WRJTz",
)
QPOS_KEYS = ("qpos_left", "qpos_right", "qpos_left_st", "qpos_right_st")
SCALAR_KEYS = ("scale", "energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints")
META_KEY = "__meta__"
PROVENANCE_KEYS = ("seed", "round_id", "item_index")

Columns = dict[str, np.ndarray]


class ResultError(ValueError):
    """A round's result file is unusable; str() is the reason recorded in the manifest."""


def load_items(path: Path) -> np.ndarray:
    try:
        items = np.load(path, allow_pickle=True)
    except FileNotFoundError:
        raise ResultError(f"no result file at {path}") from None
    except Exception as exc:  # truncated pickles raise anything from EOFError to ValueError
        raise ResultError(f"unreadable result file ({type(exc).__name__}: {exc})") from None
    if not isinstance(items, np.ndarray):
        raise ResultError(f"result file holds {type(items).__name__}, not a list of dicts")
    if items.dtype == object and items.ndim == 0:
        held = type(items.item()).__name__
        raise ResultError(f"result file holds a {held}, not a list of dicts")
    if items.dtype != object or items.ndim != 1:
        raise ResultError(
            f"result file holds a {items.dtype} array of shape {items.shape}, "
            "not a list of dicts"
        )
    return items


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _extra_keys(first: Mapping[str, Any]) -> list[str]:
    known = set(QPOS_KEYS) | set(SCALAR_KEYS) | {META_KEY}
    return [k for k, v in first.items() if k not in known and _is_number(v)]


def _check_item(j: int, item: Any, keys: set[str]) -> None:
    if not isinstance(item, dict):
        raise ResultError(f"grasp {j} is a {type(item).__name__}, not a dict")
    missing = [k for k in (*QPOS_KEYS, *SCALAR_KEYS) if k not in item]
    if missing:
        raise ResultError(f"grasp {j} lacks key(s) {', '.join(missing)}")
    if set(item) - {META_KEY} != keys:
        extra = sorted((set(item) - {META_KEY}) ^ keys)
        raise ResultError(f"grasp {j} has keys that differ from grasp 0: {', '.join(extra)}")
    for k in QPOS_KEYS:
        qpos = item[k]
        if not isinstance(qpos, dict) or tuple(qpos) != QPOS_NAMES:
            raise ResultError(f"grasp {j}: {k} is not a dict of the 28 joint names in order")


def _column(items: np.ndarray, key: str) -> np.ndarray:
    try:
        return np.array([item[key] for item in items], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ResultError(f"{key} has a value that is not a number ({exc})") from None


def _qpos_column(items: np.ndarray, key: str) -> np.ndarray:
    try:
        rows = [list(item[key].values()) for item in items]
        return np.array(rows, dtype=np.float64).reshape(len(items), len(QPOS_NAMES))
    except (TypeError, ValueError) as exc:
        raise ResultError(f"{key} has a value that is not a number ({exc})") from None


def to_columns(items: np.ndarray, expected_len: int | None) -> Columns:
    """Validate every grasp and return float64 columns (qpos as N x 28)."""
    if expected_len is not None and len(items) != expected_len:
        raise ResultError(f"wrong batch length: {len(items)} grasps, expected {expected_len}")
    if len(items) == 0:
        raise ResultError("result file holds no grasps")
    if not isinstance(items[0], dict):
        raise ResultError(f"grasp 0 is a {type(items[0]).__name__}, not a dict")
    extras = _extra_keys(items[0])
    keys = set(items[0]) - {META_KEY}
    for j, item in enumerate(items):
        _check_item(j, item, keys)
    columns: Columns = {k: _qpos_column(items, k) for k in QPOS_KEYS}
    for key in (*SCALAR_KEYS, *extras):
        columns[key] = _column(items, key)
    for key, col in columns.items():
        bad = ~np.isfinite(col)
        if bad.any():
            j = int(np.argwhere(bad)[0][0])
            raise ResultError(f"non-finite {key} ({col[j].ravel()[0]}) in grasp {j}"
                              if col.ndim == 1 else f"non-finite {key} in grasp {j}")
    return columns


def read_round(path: Path, expected_len: int | None) -> Columns:
    return to_columns(load_items(path), expected_len)


def accept_mask(columns: Columns, thresholds: Mapping[str, float]) -> np.ndarray:
    """Grasps passing every ``max_<key>`` threshold of the quality filter."""
    n = len(columns["energy"])
    mask = np.ones(n, dtype=bool)
    for key, limit in thresholds.items():
        mask &= columns[key] <= limit
    return mask


def with_provenance(columns: Columns, seed: int, round_id: int) -> Columns:
    n = len(columns["energy"])
    out = dict(columns)
    out["seed"] = np.full(n, seed, dtype=np.int64)
    out["round_id"] = np.full(n, round_id, dtype=np.int64)
    out["item_index"] = np.arange(n, dtype=np.int64)
    return out


def select(columns: Columns, mask: np.ndarray | slice) -> Columns:
    return {k: v[mask] for k, v in columns.items()}


def read_accepted(path: Path, batch_size: int, thresholds: Mapping[str, float], seed: int,
                  round_id: int) -> tuple[int, Columns]:
    """Validate a round's result file; return (produced, accepted grasps with provenance)."""
    columns = read_round(path, batch_size)
    mask = accept_mask(columns, thresholds)
    return len(mask), select(with_provenance(columns, seed, round_id), mask)
