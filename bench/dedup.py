"""What near-duplicate removal costs at merge: one 2,048-grasp round against 30,000 kept.

    python bench/dedup.py [--kept 30000] [--batch 2048] [--runs 7]

Emulator grasps (supervisor.emulator.grasps.make_grasps, 5% near-duplicates of the object's
attractors) through supervisor.dataset.results.to_columns, default [dedup] tolerances. Prints:
the build of an index of the kept grasps (what a resume does), the median ``admit`` of one
new round into a fresh copy of that index (the query plus the insertion), and a run of
consecutive rounds on one index (every merge of trees that insertions trigger included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.dataset.dedup import DedupIndex
from supervisor.config.schema import DedupSettings  # noqa: E402
from supervisor.emulator.grasps import make_grasps  # noqa: E402
from supervisor.dataset.results import to_columns  # noqa: E402

CODE = "Curver_Storage_Bin_Black_Small"
NEAR_DUP = (0.05, 0.001)


def round_columns(seed: int, batch: int) -> dict[str, np.ndarray]:
    items = np.empty(batch, dtype=object)
    items[:] = make_grasps(CODE, seed, batch, 10000, NEAR_DUP)
    return to_columns(items, batch)


def concat(parts: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts])[:n] for k in parts[0]}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    settings = DedupSettings(enabled=True)
    rounds_needed = -(-args.kept // args.batch)
    kept = concat([round_columns(s, args.batch) for s in range(rounds_needed)], args.kept)
    fresh = [round_columns(1000 + r, args.batch) for r in range(args.runs)]

    builds, admits, removed = [], [], []
    for columns in fresh:
        start = time.perf_counter()
        index = DedupIndex.from_columns(settings, kept)
        builds.append(time.perf_counter() - start)
        start = time.perf_counter()
        mask = index.admit(columns)
        admits.append(time.perf_counter() - start)
        removed.append(int((~mask).sum()))
    print(f"index of {args.kept} kept grasps, built in  {ms(statistics.median(builds))} "
          f"(median of {args.runs})")
    print(f"dedup of a {args.batch}-grasp round:       {ms(statistics.median(admits))} "
          f"(median of {args.runs}; max {ms(max(admits)).strip()}; "
          f"{statistics.median(removed):.0f} near-duplicates removed)")

    index = DedupIndex.from_columns(settings, kept)
    steps = []
    for columns in [round_columns(2000 + r, args.batch) for r in range(2 * args.runs)]:
        start = time.perf_counter()
        index.admit(columns)
        steps.append(time.perf_counter() - start)
    print(f"{len(steps)} consecutive rounds on one index: mean {ms(statistics.mean(steps))}, "
          f"max {ms(max(steps)).strip()}; {len(index)} kept in {index.tree_count} trees")


if __name__ == "__main__":
    main()
