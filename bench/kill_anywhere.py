"""Kill the supervisor with SIGKILL many times at random moments, resume, verify.

    python bench/kill_anywhere.py [--kills 50] [--seed 7]

Prints the kills per kind (a log line reached, or a crash point inside the write path),
how many experiments were completed through kills, and the grasps checked against an
uninterrupted run. The same harness runs in CI with 10 kills
(tests/test_reliability.py); ``pytest -m slow`` runs 50.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import Layout, cli_env  # noqa: E402
from faultinjection import DEDUP_SETTINGS, kill_anywhere  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dedup", action="store_true",
                        help="with [dedup] on and rounds that hold near-duplicates")
    args = parser.parse_args()
    settings = DEDUP_SETTINGS if args.dedup else None
    with tempfile.TemporaryDirectory() as tmp:
        report = kill_anywhere(Layout(Path(tmp)), args.kills, args.seed, cli_env(), settings)
    total = sum(report.kills.values())
    print(f"kills survived: {total} (seed {args.seed})")
    for kind, n in sorted(report.kills.items()):
        print(f"  {kind}: {n}")
    print(f"experiments completed through kills: {report.experiments}, "
          f"resumes: {report.resumes}")
    print(f"grasps checked equal to an uninterrupted run: {report.grasps_checked}, "
          f"lost: 0, duplicated: 0")
    print(f"wall time: {report.wall_s:.1f} s")


if __name__ == "__main__":
    main()
