"""``dataset-info``: how good and how diverse the grasps of final.npz files are.

    python -m supervisor dataset-info PATH [PATH ...] [--json] [--threshold KEY=VALUE]

PATH is a ``final.npz``, an object's folder holding one, or an experiment's ``final/``
folder (every object in it). For each object, and for all together when there are several:
the grasp count; min, p5, median, p95 and max of every energy term; how many grasps each
quality-filter threshold (``[filter] max_<key>``) would keep at a few values; and the
distance from each grasp to its nearest other grasp in dedup's units (scaled Chebyshev,
1.0 = exactly at the ``[dedup]`` tolerances, see supervisor/dedup.py), which says how
diverse the set is and how much dedup would remove. The summary functions are pure.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from supervisor import dataset
from supervisor.dedup import DedupSettings, dedup_mask, nearest_distances
from supervisor.results import SCALAR_KEYS

QUANTILES = (("min", 0.0), ("p5", 0.05), ("median", 0.5), ("p95", 0.95), ("max", 1.0))
NN_LEVELS = (1.0, 2.0, 4.0)
NN_CAP = 8.0  # past this the search costs more than it tells: reported as "> 8"
LADDER_SIZE = 5
ENERGY_KEYS = tuple(k for k in SCALAR_KEYS if k != "scale")
FINAL_NAME = "final.npz"

Data = Mapping[str, np.ndarray]


class InfoError(Exception):
    """A path that is not a readable dataset; str() is the one line to print."""


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
        return dataset.load(path)
    except FileNotFoundError:
        raise InfoError(f"{path}: no such file") from None
    except dataset.DatasetError as exc:
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
                        **summarize(data, settings, extra, distances=distances[-1])})
        energies.append({k: data[k] for k in energy_keys(data)})
    tolerances = {k: v for k, v in settings.to_json().items() if k != "enabled"}
    return {
        "dedup_tolerances": tolerances,
        "objects": objects,
        "all": summarize_all(energies, objects, distances, extra) if len(objects) > 1
        else None,
    }


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
