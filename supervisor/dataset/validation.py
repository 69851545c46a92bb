"""[validate]: a round's validation figures on disk, and what they do to its grasps.

``{exp_dir}/validation/{object_code}/r{round_id}.npz`` holds, for each accepted grasp of
the round that was validated (``item_index``, its index in main.py's file), ``passed`` and
the validator's per-grasp figures (the built-in's ``max_translation_m``,
``max_rotation_deg``, ``penetration_m``, ``fail_reason``; a command's own arrays). It is
written atomically before the round's ``RoundValidated`` event, and kept after the round
folder is cleaned up (the report and status read it): a few bytes per grasp.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from supervisor.dataset.results import PROVENANCE_KEYS, QPOS_KEYS, SCALAR_KEYS, Columns
from supervisor.storage.fsutil import atomic_write

PASSED = "passed"
REASON = "fail_reason"
REJECTED = "rejected"  # a failure whose validator gave no reason
# what the built-in validator writes (supervisor.validate), and their dtype kinds
BUILTIN = {PASSED: "b", "max_translation_m": "f", "max_rotation_deg": "f",
           "penetration_m": "f", REASON: "U"}
# names a validator's column may not take: the grasps' own
RESERVED = frozenset({*QPOS_KEYS, *SCALAR_KEYS, *PROVENANCE_KEYS, "qpos_names"})


class ValidationError(ValueError):
    """A validator's output or a round's validation file is unusable (the message says
    which and why)."""


def path(exp_dir: Path, code: str, round_id: int) -> Path:
    return exp_dir / "validation" / code / f"r{round_id}.npz"


def check(figures: dict[str, np.ndarray], n: int, where: str) -> dict[str, np.ndarray]:
    """A validator's figures for ``n`` grasps: ``passed`` (booleans, or 0/1), and other
    per-grasp arrays of numbers, booleans or text, none named as a grasp's own array."""
    if PASSED not in figures:
        raise ValidationError(f"{where}: no 'passed' array")
    out: dict[str, np.ndarray] = {}
    for key, arr in figures.items():
        arr = np.asarray(arr)
        if key in RESERVED or key == "item_index":
            raise ValidationError(f"{where}: an array named {key!r}, as a grasp's own")
        if arr.ndim < 1 or arr.shape[0] != n:
            raise ValidationError(f"{where}: {key!r} has shape {arr.shape}, expected "
                                  f"{n} values (one per grasp in the file)")
        if arr.dtype.kind not in "biufU":
            raise ValidationError(f"{where}: {key!r} is of dtype {arr.dtype}, expected "
                                  f"numbers, booleans or text")
        out[key] = arr
    passed = out[PASSED]
    if passed.dtype.kind != "b":
        if passed.dtype.kind not in "iu" or not np.isin(passed, (0, 1)).all():
            raise ValidationError(f"{where}: 'passed' holds {passed.dtype} values other "
                                  f"than 0 and 1")
        out[PASSED] = passed.astype(bool)
    if passed.ndim != 1:
        raise ValidationError(f"{where}: 'passed' has shape {passed.shape}, expected ({n},)")
    return out


def read_output(file: Path, n: int) -> dict[str, np.ndarray]:
    """What a validator wrote at ``{out}``: checked figures for the file's ``n`` grasps."""
    return check(_arrays(file, "not written", "not an .npz of arrays"), n, str(file))


def _arrays(file: Path, missing: str, bad: str) -> dict[str, np.ndarray]:
    """An .npz's arrays; ValidationError naming the file (``missing``, ``bad (why)``)."""
    try:
        with np.load(file, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ValidationError(f"{file}: {missing}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValidationError(f"{file}: {bad} ({exc})") from None


def write(file: Path, items: np.ndarray, figures: dict[str, np.ndarray]) -> None:
    arrays = {"item_index": np.asarray(items, np.int64), **figures}
    atomic_write(file, lambda f: np.savez(f, **arrays))


def read(file: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A round's validation file: the items validated and their figures."""
    arrays = _arrays(file, "no validation file", "unreadable")
    if "item_index" not in arrays:
        raise ValidationError(f"{file}: no item_index array")
    items = arrays.pop("item_index")
    return items, check(arrays, len(items), str(file))


def failed_by(figures: dict[str, np.ndarray]) -> dict[str, int]:
    """Failures counted by reason ("rejected" where the validator gave none)."""
    failed = ~figures[PASSED]
    reasons = figures.get(REASON)
    if reasons is None:
        return {REJECTED: int(failed.sum())} if failed.any() else {}
    counts = Counter(str(r) or REJECTED for r in reasons[failed])
    return dict(sorted(counts.items()))


def apply(columns: Columns, items: np.ndarray, figures: dict[str, np.ndarray]) -> Columns:
    """The round's accepted grasps (``columns``) that passed, with the figures as columns.
    ``items`` must be the grasps' item indices, in the columns' order."""
    if not np.array_equal(np.asarray(items), columns["item_index"]):
        raise ValidationError("the validation figures are for other grasps of the round "
                              "than those accepted")
    keep = figures[PASSED]
    out = {k: v[keep] for k, v in columns.items()}
    out.update({k: v[keep] for k, v in figures.items()})
    return out
