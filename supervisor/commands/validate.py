"""``python -m supervisor validate RESULTS... --checkout PATH [--out FILE] [--workers N]``:
the built-in validator (``supervisor.validate``) on main.py output made without the
supervisor, to try it on data a lab already has.

RESULTS are main.py result folders (every ``*.npy`` in them), ``.npy`` files (the object
is the grasps' ``__meta__`` object code, else the file's name, as main.py names it) or
``final.npz`` files (the object is their folder's name). It prints, per object, the pass
rate, how many grasps failed for each reason and the figures' medians. ``--out`` writes
every grasp's figures: ``.npz`` (arrays) or ``.csv`` (one row a grasp), with the object,
the file and the grasp's index in it. The protocol's parameters can be changed as in
``[validate]`` (``--max_penetration_m 0.02``). Exit 2 with one line for a bad checkout,
file or option.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from supervisor.commands.args import Parser, UsageError
from supervisor.commands.dataset_info import object_code as final_object_code
from supervisor.config.schema import PROTOCOL_KEYS, ValidateSettings
from supervisor.dataset import final
from supervisor.dataset.export import to_legacy
from supervisor.dataset.results import META_KEY, ResultError, load_items
from supervisor.storage.fsutil import atomic_write, atomic_write_bytes
from supervisor.storage.paths import FINAL_NAME
from supervisor.validate.builtin import (
    COLUMNS, ValidateError, check, check_setup, settings_from,
)

OUT_SUFFIXES = (".npz", ".csv")
CHUNKS_PER_WORKER = 4  # tasks per process, so that uneven grasps even out


@dataclass
class Source:
    path: Path
    code: str
    items: list[dict]


def _npy_source(path: Path) -> Source:
    try:
        items = list(load_items(path))
    except ResultError as exc:
        raise UsageError(f"{path}: {exc}") from None
    meta = items[0].get(META_KEY) if items and isinstance(items[0], dict) else None
    code = meta.get("object_code") if isinstance(meta, dict) else None
    return Source(path, str(code or path.stem), items)


def _final_source(path: Path) -> Source:
    try:
        data = final.load(path)
    except (final.DatasetError, OSError) as exc:
        raise UsageError(str(exc)) from None
    code = final_object_code(path)
    return Source(path, code, list(to_legacy(final.grasp_columns(data), code)))


def sources(paths: Sequence[str]) -> list[Source]:
    """What each RESULTS argument names; raises UsageError."""
    found: list[Source] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(path.glob("*.npy")) or sorted(path.glob(f"*/{FINAL_NAME}"))
            if not files and (path / FINAL_NAME).is_file():
                files = [path / FINAL_NAME]
            if not files:
                raise UsageError(f"{path}: no *.npy (main.py's results) nor {FINAL_NAME} in "
                                 f"this folder")
            found += [_final_source(f) if f.suffix == ".npz" else _npy_source(f)
                      for f in files]
        elif path.is_file():
            found.append(_final_source(path) if path.suffix == ".npz" else _npy_source(path))
        else:
            raise UsageError(f"{path}: no such file or folder")
    return found


def _task(args: tuple[str, str, list[dict], dict]) -> dict[str, np.ndarray]:
    checkout, code, items, protocol = args
    return check(Path(checkout), code, items, settings_from(protocol))


def run(found: Sequence[Source], checkout: Path, settings: ValidateSettings,
        workers: int) -> list[dict[str, np.ndarray]]:
    """Each source's columns, validated in ``workers`` processes (1: here)."""
    chunk = max(1, -(-sum(len(s.items) for s in found) // (workers * CHUNKS_PER_WORKER)))
    tasks, owners = [], []
    for n, s in enumerate(found):
        for i in range(0, len(s.items), chunk):
            tasks.append((str(checkout), s.code, s.items[i:i + chunk], settings.protocol()))
            owners.append(n)
    if workers == 1:
        done = [_task(t) for t in tasks]
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(tasks) or 1)) as pool:
            done = list(pool.map(_task, tasks))
    out = []
    for n, s in enumerate(found):
        parts = [d for d, o in zip(done, owners) if o == n]
        out.append({k: np.concatenate([p[k] for p in parts]) if parts
                    else np.zeros(0, dtype=bool if k == "passed" else np.float64)
                    for k in COLUMNS})
    return out


def _mm(values: np.ndarray, unit: float = 1000.0) -> str:
    values = values[np.isfinite(values)]
    return f"{np.median(values) * unit:.1f}" if len(values) else "-"


def summary(code: str, columns: dict[str, np.ndarray]) -> str:
    """One object's line: pass rate, failures by reason, the figures' medians."""
    n, passed = len(columns["passed"]), int(columns["passed"].sum())
    reasons, counts = np.unique(columns["fail_reason"][~columns["passed"]],
                                return_counts=True)
    why = ", ".join(f"{r} {c}" for r, c in zip(reasons, counts)) or "none"
    return (f"{code}: {passed} of {n} passed ({100 * passed / max(n, 1):.0f}%); failed: {why}; "
            f"medians: translation {_mm(columns['max_translation_m'])} mm, rotation "
            f"{_mm(columns['max_rotation_deg'], 1.0)} deg, initial penetration "
            f"{_mm(columns['penetration_m'])} mm")


def joined(results: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([r[k] for r in results]) for k in COLUMNS}


def per_object(found: Sequence[Source],
               results: Sequence[dict[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    grouped: dict[str, list[dict[str, np.ndarray]]] = {}
    for s, cols in zip(found, results):
        grouped.setdefault(s.code, []).append(cols)
    return {code: joined(cs) for code, cs in grouped.items()}


def table(found: Sequence[Source], results: Sequence[dict[str, np.ndarray]]) -> dict:
    """Every grasp's row: object, file, index in the file, and the five columns."""
    rows = {"object_code": np.array([s.code for s in found for _ in s.items]),
            "path": np.array([str(s.path) for s in found for _ in s.items]),
            "index": np.concatenate([np.arange(len(s.items)) for s in found]
                                    or [np.zeros(0, np.int64)])}
    rows.update(joined(results))
    return rows


def write_out(path: Path, rows: dict[str, np.ndarray]) -> None:
    if path.suffix == ".npz":
        atomic_write(path, lambda f: np.savez(f, **rows))
        return
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(list(rows))
    for j in range(len(rows["index"])):
        writer.writerow([rows[k][j].item() if hasattr(rows[k][j], "item") else rows[k][j]
                         for k in rows])
    atomic_write_bytes(path, text.getvalue().encode())


def build_parser() -> Parser:
    p = Parser(prog="python -m supervisor validate", description=(
        "Validate main.py output made without the supervisor with the built-in MuJoCo "
        "validator; print each object's pass rate and why grasps failed."))
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="main.py result folders, .npy files or final.npz files")
    p.add_argument("--checkout", type=Path, required=True,
                   help="the BimanGrasp-Optimization folder (its mjcf/ and ../data/meshdata)")
    p.add_argument("--out", type=Path, default=None,
                   help="write every grasp's figures to this .npz or .csv")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="validation processes (default: the CPU cores)")
    defaults = ValidateSettings()
    for key in PROTOCOL_KEYS:
        p.add_argument(f"--{key}", type=float, default=getattr(defaults, key),
                       help=f"[validate] {key} (default {getattr(defaults, key)})")
    return p


def _checked(args) -> ValidateSettings:
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.out is not None and (args.out.suffix not in OUT_SUFFIXES
                                 or not args.out.parent.is_dir()):
        raise UsageError(f"--out {args.out}: a .npz or .csv file in an existing folder")
    try:
        return settings_from({k: getattr(args, k) for k in PROTOCOL_KEYS})
    except ValidateError as exc:
        raise UsageError(str(exc).replace("settings: ", "--")) from None


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    settings = _checked(args)
    found = sources(args.results)
    problem = check_setup(args.checkout, sorted({s.code for s in found}))
    if problem is not None:
        raise UsageError(problem)
    try:
        results = run(found, args.checkout, settings, args.workers)
    except ValidateError as exc:
        raise UsageError(str(exc)) from None
    objects = per_object(found, results)
    for code, columns in objects.items():
        print(summary(code, columns))
    if len(objects) > 1:
        print(summary(f"all {len(objects)} objects", joined(results)))
    if args.out is not None:
        write_out(args.out, table(found, results))
        print(f"per-grasp figures -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
