"""The gallery at scale (printed, not asserted): python bench/gallery.py [--objects 1000]

Runs the real supervisor over the emulator for ``--objects`` objects (one small round
each), then ``python -m supervisor report`` twice with ``[view]`` pointing at the stand-in
checkout of the tests (tests/fixtures/standin-checkout: boxes for hands, so the times are
the supervisor's side plus the helpers' protocol, not the real hand model's), and prints:
the report's size with its pictures, the largest object page, the shared files, the time
of the first report (every grasp drawn) and of the second (all from the cache), and the
cache's size. The real BimanGrasp hand model adds its own figures: docs/report.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import EMULATOR_COMMAND, cli_env, write_toml  # noqa: E402

STANDIN = ROOT / "tests" / "fixtures" / "standin-checkout"


def run(args: list[str], cwd: Path) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=7200)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.monotonic() - started, proc.stdout


def size(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=1000)
    n = p.parse_args().objects
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "BimanGrasp-Optimization").mkdir()
        write_toml(root / "c.toml", {
            "exp_name": "g", "experiments_dir": "exp",
            "object_code_list": [f"object_{i:04d}" for i in range(n)],
            "target_count_per_object": 8, "round_batch_size": 8, "num_iterations": 2,
            "gpus": list(range(8)),
            "main": {"command": EMULATOR_COMMAND, "cwd": "BimanGrasp-Optimization",
                     "env": {"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0"}, "threads": 1},
            "gpu": {"probe": "static", "poll_interval_s": 0.05},
            "disk": {"min_free_gib": 0.01}, "logs": {"progress_interval_s": 600.0},
            "view": {"cwd": str(STANDIN / "BimanGrasp-Optimization"),
                     "env": {"PYTHONPATH": str(STANDIN / "site")}},
        })
        ran, _ = run(["c.toml"], root)
        print(f"{n} objects: run {ran:.0f} s")
        first, out = run(["report", "c.toml"], root)
        second, out2 = run(["report", "c.toml"], root)
        exp = root / "exp" / "g"
        gallery = exp / "gallery"
        pictures = list(gallery.glob("*.png"))
        pages = [q for q in gallery.glob("*.html")]
        shared = [gallery / "plotly.min.js", *gallery.glob("hands-*.js")]
        report = exp / "report.html"
        cache = [q for q in (exp / "gallery-cache").rglob("*") if q.is_file()]
        print(f"report.html {size([report]):.1f} MB + {len(pictures)} pictures "
              f"{size(pictures):.1f} MB = {size([report, *pictures]):.1f} MB")
        print(f"object pages: {len(pages)}, largest {max(q.stat().st_size for q in pages) / 1e6:.2f}"
              f" MB, all {size(pages):.1f} MB; shared (plotly.js, hands) {size(shared):.1f} MB")
        print(f"first report {first:.1f} s ({re.search(r'gallery: .*', out).group(0)})")
        print(f"second report {second:.1f} s ({re.search(r'gallery: .*', out2).group(0)})")
        print(f"cache: {len(cache)} files, {size(cache):.1f} MB")
        shown, _ = run(["show", "c.toml", "object_0000", "--best", "4", "--no-open"], root)
        print(f"show (4 grasps, cached): {shown:.1f} s")


if __name__ == "__main__":
    main()
