"""``dataset-info``: how good and how diverse the grasps of final.npz files are.

    python -m supervisor dataset-info PATH [PATH ...] [--json] [--threshold KEY=VALUE]

PATH is a ``final.npz``, an object's folder holding one, or an experiment's ``final/``
folder (every object in it). For each object, and for all together when there are several:
the grasp count; min, p5, median, p95 and max of every energy term; how many grasps each
quality-filter threshold would keep at a few values; and the distribution of each grasp's
distance to its nearest neighbour (``supervisor.dataset.quality``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from supervisor.config.schema import DedupSettings
from supervisor.dataset import final
from supervisor.dataset.dedup import nearest_distances
from supervisor.dataset import validation
from supervisor.dataset.quality import (
    QUANTILES, energy_keys, quantiles, summarize, summarize_all,
)
from supervisor.dataset.results import PROVENANCE_KEYS, QPOS_KEYS, SCALAR_KEYS
from supervisor.storage.paths import FINAL_NAME


class InfoError(Exception):
    """A path that is not a readable dataset; str() is the one line to print."""


def find_datasets(paths: Sequence[str]) -> list[Path]:
    """final.npz files named by ``paths`` (files, object folders, a ``final/`` folder)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = [path / FINAL_NAME] if (path / FINAL_NAME).is_file() \
                else sorted(path.glob(f"*/{FINAL_NAME}"))
            if not inside:
                raise InfoError(f"{path}: no {FINAL_NAME} in this folder "
                                f"nor in its subfolders")
            found.extend(inside)
        elif path.exists():
            found.append(path)
        else:
            raise InfoError(f"{path}: no such file")
    return found


def object_code(path: Path) -> str:
    return path.parent.name if path.name == FINAL_NAME else path.stem


def load(path: Path) -> dict[str, np.ndarray]:
    try:
        return final.load(path)
    except FileNotFoundError:
        raise InfoError(f"{path}: no such file") from None
    except final.DatasetError as exc:
        raise InfoError(str(exc)) from None
    except OSError as exc:
        raise InfoError(f"{path}: unreadable ({exc})") from None


def report(paths: Sequence[Path], settings: DedupSettings,
           extra: Mapping[str, float] | None = None) -> dict[str, Any]:
    """The whole dataset-info document for these final.npz files.

    One object in memory at a time; of the others only energies and distances are kept.
    """
    objects: list[dict[str, Any]] = []
    energies: list[dict[str, np.ndarray]] = []
    distances: list[np.ndarray] = []
    for path in paths:
        data = load(path)
        unknown = sorted(set(extra or {}) - set(energy_keys(data)))
        if unknown:
            raise InfoError(f"--threshold {unknown[0]}: not an energy term of {path} "
                            f"(one of {', '.join(energy_keys(data))})")
        distances.append(nearest_distances(data, settings))
        objects.append({"object_code": object_code(path), "path": str(path),
                        **summarize(data, settings, extra, distances=distances[-1]),
                        "validation": validation_figures(data)})
        energies.append({k: data[k] for k in energy_keys(data)})
    tolerances = {k: v for k, v in settings.to_json().items() if k != "enabled"}
    return {
        "dedup_tolerances": tolerances,
        "objects": objects,
        "all": summarize_all(energies, objects, distances, extra) if len(objects) > 1
        else None,
    }


def validation_figures(data: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """[validate]'s per-grasp figures in the dataset (the built-in's and a command's own
    numbers): their quantiles; None for a dataset made without validation."""
    if validation.PASSED not in data:
        return None
    known = {*QPOS_KEYS, *SCALAR_KEYS, *PROVENANCE_KEYS, "qpos_names", validation.PASSED}
    keys = sorted(k for k in data if k not in known and k not in energy_keys(data)
                  and data[k].ndim == 1 and data[k].dtype.kind in "biuf")
    return {k: quantiles(data[k]) for k in keys}


def _num(value: float | None, cap: float | None = None) -> str:
    if value is None:
        return f">{cap:g}" if cap is not None else "-"
    return f"{value:.4g}"


def _section(title: str, summary: Mapping[str, Any]) -> list[str]:
    n = summary["count"]
    lines = [title, f"  grasps: {n}", "  " + f"{'energy term':<12}" + "".join(
        f"{name:>11}" for name, _ in QUANTILES)]
    for key, q in summary["energies"].items():
        lines.append(f"  {key:<12}" + "".join(f"{_num(v):>11}" for v in q.values()))
    lines.append("  filter kept (grasps with value <= threshold):")
    for key, rows in summary["filters"].items():
        cells = [f"<= {r['threshold']:g}: {r['kept']} ({100 * r['kept'] / max(n, 1):.0f}%)"
                 for r in rows]
        lines.append(f"    {key:<14}" + "   ".join(cells))
    nn = summary["nearest_neighbour"]
    cap = nn["cap"] if n else None
    lines.append("  nearest neighbour (1.0 = at the dedup tolerances): " + "  ".join(
        f"{name} {_num(v, cap)}" for name, v in nn["quantiles"].items()))
    lines.append("    " + "   ".join(f"within {lvl}: {c} ({100 * c / max(n, 1):.1f}%)"
                                    for lvl, c in nn["within"].items()))
    lines.append(f"  dedup at these tolerances would keep {summary['dedup_keeps']} of {n}")
    figures = summary.get("validation")
    if figures:
        lines.append("  validation figures (every grasp here passed):")
        for key, q in figures.items():
            lines.append(f"  {key:<18}" + "".join(f"{_num(v):>11}" for v in q.values()))
    return lines


def render_text(rep: Mapping[str, Any]) -> str:
    tol = rep["dedup_tolerances"]
    lines = [f"dedup tolerances: joints {tol['joint_tol_rad']:g} rad, wrist rotation "
             f"{tol['rotation_tol_rad']:g} rad, wrist translation {tol['translation_tol_m']:g} m"]
    for obj in rep["objects"]:
        lines += ["", *_section(f"{obj['object_code']}  ({obj['path']})", obj)]
    if rep["all"] is not None:
        lines += ["", *_section(f"all {rep['all']['objects']} objects", rep["all"])]
    return "\n".join(lines) + "\n"


def _threshold(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    key = key[4:] if key.startswith("max_") else key
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=NUMBER") from None
    if not key or not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=NUMBER")
    return key, number


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m supervisor dataset-info",
                                description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="final.npz files, object folders or an experiment's final/ folder")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--threshold", type=_threshold, action="append", default=[],
                   metavar="KEY=VALUE", help="also count grasps at this filter threshold, "
                   "e.g. max_E_pen=0.0015 (repeatable)")
    defaults = DedupSettings()
    for key in ("joint_tol_rad", "rotation_tol_rad", "translation_tol_m"):
        p.add_argument(f"--{key}", type=float, default=getattr(defaults, key),
                       help=f"[dedup] {key} for the distances (default {getattr(defaults, key)})")
    return p


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    table = {k: getattr(args, k) for k in ("joint_tol_rad", "rotation_tol_rad",
                                          "translation_tol_m")}
    try:
        settings = DedupSettings.from_table(table, "command line")
        rep = report(find_datasets(args.paths), settings, dict(args.threshold))
    except (InfoError, ValueError) as exc:
        print(f"dataset-info: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        sys.stdout.write(render_text(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
