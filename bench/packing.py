"""Packing figures (printed, not asserted): python bench/packing.py [--quick]

The real supervisor (``python -m supervisor CONFIG``) over emulator rounds that share
emulated cards (``supervisor.emulator.cards``, read by ``[gpu] probe = "emulator"``): 16
objects of uneven cost (``EMULATOR_OBJECT_COST``), 4 cards whose memory admits 6 rounds
each, for each throughput curve (the card's grasps/s with 1, 2, 3, ... rounds, relative
to one). Each curve runs with a fixed number of rounds per card (1, its neighbours,
what memory admits: today's memory-only "auto"), and with the new "auto". Printed per
run: grasps per card-hour, the wall time, when the last level change happened (time to
settle), rounds that ran out of memory and how many of them were charged to an object or
a card (round_failed, gpu_quarantined: goal 0). The "auto" experiment is then resumed to
twice its target: that run starts from the levels the first one learned, as a long run
holds them once found (its re-tests included), so it shows what exploring costs apart.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import EMULATOR_COMMAND, cli_env, write_toml  # noqa: E402

CARDS, OBJECTS, FITS = 4, 16, 6
CURVES = {
    "peak at 1": ("1,0.9,0.85,0.8", (1, 2)),
    "peak at 2": ("1,1.8,1.75,1.7", (1, 2, 3)),
    "falls after 2": ("1,1.7,1.3,1.1", (1, 2, 3)),
    "peak at 4": ("1,1.55,1.9,2.2,2.15", (1, 3, 4, 5)),
}


def config(root: Path, curve: str, level: int | str, target: int) -> Path:
    # 400 iterations of 20 ms: rounds of about 8 s, with few enough wake-ups that the
    # emulator's own per-iteration cost (CPU on this machine) does not bend the curve.
    iterations = 400
    env = {"EMULATOR_STARTUP_S": "0.3", "EMULATOR_ITER_S": "0.02",
           "EMULATOR_GPU_DIR": str(root / "cards"), "EMULATOR_GPU_CURVE": curve,
           "EMULATOR_GPU_MEMORY_MIB": str(FITS * 6_000 + 2_000),
           "EMULATOR_ROUND_MEMORY_MIB": "6000", "EMULATOR_OBJECT_COST": "0.5"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "BimanGrasp-Optimization").mkdir(exist_ok=True)
    return write_toml(root / "c.toml", {
        "exp_name": "b", "experiments_dir": "exp",
        "object_code_list": [f"object_{i:02d}" for i in range(OBJECTS)],
        "target_count_per_object": target, "round_batch_size": 8,
        "num_iterations": iterations, "gpus": list(range(CARDS)),
        "main": {"command": EMULATOR_COMMAND, "cwd": "BimanGrasp-Optimization", "env": env,
                 "threads": 1},
        "gpu": {"probe": "emulator", "max_rounds_per_gpu": level, "min_free_mib": 500,
                "round_memory_mib": 6000, "poll_interval_s": 0.1,
                "pack_window_s": 2.0, "pack_retest_s": 60.0},
        "disk": {"min_free_gib": 0.01}, "logs": {"progress_interval_s": 600.0},
    })


def run(curve: str, level: int | str, quick: bool, resumed: bool = False) -> dict:
    """One run; with ``resumed``, the same experiment is then run on to twice the target
    (a resumed run starts from the levels the first one learned, as a long run holds
    them once found), and that second run's figures are returned beside."""
    target = 16 if quick else 48
    with tempfile.TemporaryDirectory() as tmp:
        first = _run(config(Path(tmp), curve, level, target))
        if resumed:
            first["resumed"] = _run(config(Path(tmp), curve, level, 2 * target))
    return first


def _run(path: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "supervisor", str(path)],
                          env=cli_env(), capture_output=True, text=True, timeout=3600)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    summary = next(e for e in events if e["event"] == "run_finished")
    started = next(e for e in events if e["event"] == "run_started")["timestamp"]
    changes = [e for e in events if e["event"] == "packing_changed"]
    from datetime import datetime

    def t(stamp: str) -> float:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    wall = summary["wall_s"]
    return {"exit": proc.returncode,  # this run's grasps (a resumed one's too), per card-hour
            "grasps_per_card_hour": summary["grasps_this_run"] / (wall * CARDS / 3600),
            "wall_s": wall,
            "settled_s": max((t(c["timestamp"]) - t(started) for c in changes), default=0.0),
            "levels": sorted({c["to"] for c in changes}),
            "oom": sum(e["event"] == "round_out_of_memory" for e in events),
            "charged": sum(e["event"] in ("round_failed", "gpu_quarantined") for e in events)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a third of the work per run")
    p.add_argument("--curve", choices=CURVES, action="append",
                   help="only this curve (repeatable)")
    args = p.parse_args()
    quick = args.quick
    for name, (curve, levels) in CURVES.items():
        if args.curve and name not in args.curve:
            continue
        rows = {f"fixed {k}": run(curve, k, quick) for k in levels}
        rows[f"fixed {FITS} (memory-only auto)"] = run(curve, FITS, quick)
        rows["auto"] = run(curve, "auto", quick, resumed=True)
        rows["auto, resumed to twice the target"] = rows["auto"].pop("resumed")
        best = max(r["grasps_per_card_hour"] for k, r in rows.items() if k.startswith("fixed"))
        one = rows["fixed 1"]["grasps_per_card_hour"]
        print(f"\n{name} (curve {curve}):")
        for label, r in rows.items():
            extra = (f"; settled at {r['settled_s']:.0f} s, levels {r['levels']}"
                     if label.startswith("auto") else "")
            print(f"  {label:34} {r['grasps_per_card_hour']:8.0f} grasps/card-hour "
                  f"({r['grasps_per_card_hour'] / one:.2f}x one round), wall "
                  f"{r['wall_s']:.0f} s, exit {r['exit']}, out of memory {r['oom']}, "
                  f"charged {r['charged']}{extra}", flush=True)
        for label in ("auto", "auto, resumed to twice the target"):
            auto = rows[label]["grasps_per_card_hour"]
            print(f"  {label}: {auto / best:.3f} of the best fixed level, "
                  f"{auto / one:.2f}x one round", flush=True)


if __name__ == "__main__":
    main()
