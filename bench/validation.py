"""What the built-in validator costs, and the validation cores an 8-GPU server needs.

    python bench/validation.py [--repeat 3]
    BIMANGRASP_CHECKOUT=.../BimanGrasp-Optimization python bench/validation.py

Grasps validated per core-second (CPU time of this process, one core, scenes compiled
once and kept as a task keeps them): on the stand-in checkout's box
(tests/validate_grasps.py: a clamp that holds and so runs all 60 checks, one with a gap
that fails, one deep in the box that the penetration gate rejects unsimulated), and, when
``BIMANGRASP_CHECKOUT`` is set, on real main.py grasps of Curver_Storage_Bin_Black_Small
(tests/fixtures/bimangrasp-fork/: 50 iterations, all rejected by the gate; the same with
the gate off, so that every grasp is simulated; the converged 2,000-iteration fixture
with the defaults). Then the start-up of one ``python -m supervisor.validate.task`` (the
pool starts one per part of ``PART_GRASPS`` grasps).

The cores needed: BimanGrasp's rounds at the scale docs/main-py.md states ("batch_size
512 to 2048 and 10,000 iterations a run ... A run takes minutes to tens of minutes"),
every grasp of a round validated (no energy filter: the most work), at the cost of a
grasp that is simulated to the end (a pass, the dearest) plus its share of a task's
start-up: cores = GPUs x batch / round time x core-seconds per grasp.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402

from validate_grasps import BOX, STANDIN, as_main_py, clamp  # noqa: E402
from supervisor.config.schema import ValidateSettings  # noqa: E402
from supervisor.dataset.results import load_items  # noqa: E402
from supervisor.run.validation import PART_GRASPS  # noqa: E402
from supervisor.validate import builtin  # noqa: E402

CODE = "Curver_Storage_Bin_Black_Small"
FIXTURES = ROOT / "tests" / "fixtures" / "bimangrasp-fork"
SHORT = FIXTURES / "results" / "probe2" / f"{CODE}.npy"
CONVERGED = FIXTURES / "converged" / f"{CODE}.npy"
GPUS = 8
ROUNDS = ((512, 30), (1024, 15), (2048, 10), (2048, 5))  # grasps a round, minutes a round
SETTINGS = ValidateSettings(kind="mujoco")
NO_GATE = ValidateSettings(kind="mujoco", max_penetration_m=1.0)


def cost(checkout: Path, code: str, grasps: list[dict], settings: ValidateSettings,
         repeat: int) -> tuple[float, dict[str, int], list[dict]]:
    """Core-seconds per grasp (the fastest of ``repeat``, after one warm-up that compiles
    the scenes), the outcomes by reason, and the grasps that passed."""
    cols = builtin.check(checkout, code, grasps, settings)
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        builtin.check(checkout, code, grasps, settings)
        best = min(best, (time.process_time() - start) / len(grasps))
    reasons: dict[str, int] = {}
    for r in cols["fail_reason"].tolist():
        reasons[r or "passed"] = reasons.get(r or "passed", 0) + 1
    return best, reasons, [g for g, ok in zip(grasps, cols["passed"]) if ok]


def task_startup_s() -> float:
    """CPU time of a task with nothing to validate: interpreter, numpy, mujoco, request."""
    with tempfile.TemporaryDirectory() as tmp:
        np_file = Path(tmp) / "r.npy"
        np.save(np_file, as_main_py([clamp()], BOX), allow_pickle=True)
        request = Path(tmp) / "req.json"
        request.write_text(json.dumps({
            "results": str(np_file), "items": [], "object_code": BOX,
            "checkout": str(STANDIN), "settings": SETTINGS.protocol(),
            "out": str(Path(tmp) / "out.npz")}))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(3):
            subprocess.run([sys.executable, "-m", "supervisor.validate.task", str(request)],
                           env=env, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 3


def line(what: str, seconds: float, reasons: dict[str, int]) -> str:
    why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    return f"  {what:<58} {seconds:6.3f} core-s/grasp  {1 / seconds:7.1f} grasps/core-s  ({why})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    builtin.quiet_mujoco()
    print("Built-in validator, one core (CPU time of this process):")
    dearest = 0.0
    for what, grasp in (("stand-in box, held (all 60 checks)", clamp(0.0015)),
                        ("stand-in box, a 5 mm gap (fails)", clamp(-0.005)),
                        ("stand-in box, 30 mm deep (gate)", clamp(0.03))):
        seconds, reasons, _ = cost(STANDIN, BOX, [grasp] * 4, SETTINGS, args.repeat)
        dearest = max(dearest, seconds)
        print(line(what, seconds, reasons))
    checkout = os.environ.get("BIMANGRASP_CHECKOUT")
    if checkout:
        short = list(load_items(SHORT))
        runs = [("real, 50 iterations (gate)", short, SETTINGS),
                ("real, 50 iterations, gate off (all simulated)", short, NO_GATE)]
        if CONVERGED.exists():
            runs.append(("real, 2,000 iterations", list(load_items(CONVERGED)), SETTINGS))
        for what, grasps, settings in runs:
            seconds, reasons, passed = cost(Path(checkout), CODE, grasps, settings,
                                            args.repeat)
            print(line(what, seconds, reasons))
            if passed:  # a pass runs every check: the dearest kind
                seconds, reasons, _ = cost(Path(checkout), CODE, passed, settings,
                                           args.repeat)
                print(line(what + ": the passes", seconds, reasons))
            dearest = max(dearest, seconds)
    else:
        print("  (set BIMANGRASP_CHECKOUT to a real BimanGrasp-Optimization folder for real "
              "grasps)")
    startup = task_startup_s()
    per_grasp = dearest + startup / PART_GRASPS
    print(f"Task start-up (python -m supervisor.validate.task, nothing to validate): "
          f"{startup:.2f} core-s, {startup / PART_GRASPS:.3f} per grasp in parts of "
          f"{PART_GRASPS}")
    print(f"Validation cores for {GPUS} GPUs, every grasp validated at {per_grasp:.3f} "
          f"core-s (the dearest above plus start-up):")
    for batch, minutes in ROUNDS:
        rate = GPUS * batch / (minutes * 60)
        print(f"  rounds of {batch:>4} grasps every {minutes:>2} min per GPU: "
              f"{rate:5.1f} grasps/s -> {rate * per_grasp:5.1f} cores")


if __name__ == "__main__":
    main()
