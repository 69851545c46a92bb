"""Packing on a real card (issue 16's GPU measurement), with rounds of optimizer_main.py
(work shaped like BimanGrasp's optimizer). Printed, never asserted; CI never runs it.

usage: packing_gpu.py OUT_DIR [--budget-s S] [--batch B] [--iterations N] [--dry]

Part A, the card alone: with 1, 2, 3, 4 places, each running rounds back to back (start-up
included, as a run does), grasps per second in wall time, and each round's own iterating
speed (its last bar). Part B, the supervisor: ``max_rounds_per_gpu = "auto"`` over the same
rounds with ``probe = "nvml"``, for what is left of the budget, then SIGINT (a drain):
what auto chose, its packing_changed events and the gains it measured.
--dry: no GPU (children on the CPU with GPU_CHECK_DEVICE=cpu, the supervisor reading the
emulator's cards), tiny sizes: the plumbing only. GPU_CHECK_PYTHON: the children's
interpreter (default: this one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CHILD = HERE / "optimizer_main.py"
BAR = re.compile(r"(\d+)/(\d+) \[[^,\]]*,\s*([\d.]+)it/s\]")


def child_env(dry: bool, work: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EMULATOR_EXPERIMENTS_BASE":
           str(work / "data" / "experiments")}
    if dry:
        env.update(GPU_CHECK_DEVICE="cpu", GPU_CHECK_OBJECT_POINTS="256",
                   GPU_CHECK_LINK_POINTS="8", EMULATOR_GPU_DIR=str(work / "cards"))
    return env


def one_round(python: str, name: str, seed: int, args, env, work: Path) -> subprocess.Popen:
    cmd = [python, str(CHILD), "--name", name, "--object_code", "gpu_check_obj",
           "--batch_size", str(args.batch), "--num_iterations", str(args.iterations),
           "--seed", str(seed), "--gpu", "0", "--jitter_strength", "0.1"]
    err = open(work / f"{name}.err", "w+")  # a file: a pipe left unread would fill up
    proc = subprocess.Popen(cmd, cwd=work / "BimanGrasp-Optimization", env=env,
                            stdout=subprocess.DEVNULL, stderr=err, text=True)
    proc.err = err
    return proc


def _bars(p: subprocess.Popen) -> list[tuple[str, str, str]]:
    p.err.seek(0)
    return BAR.findall(p.err.read().replace("\r", "\n"))


def places(k: int, seconds: float, python: str, args, env, work: Path) -> dict:
    """k places on the card, each starting a new round as its last one ends, for
    ``seconds``; then the rounds still running are stopped and credited with the part of
    their iterations their bar shows (so the budget holds and no tail of fewer places
    bends the figure)."""
    t0, done, speeds, seed = time.monotonic(), 0.0, [], 0
    running: list[subprocess.Popen] = []
    for _ in range(k):
        seed += 1
        running.append(one_round(python, f"a{k}_{seed}", seed, args, env, work))
    while time.monotonic() - t0 < seconds:
        for p in [p for p in running if p.poll() is not None]:
            running.remove(p)
            bars = _bars(p)
            if p.returncode == 0:
                done += 1
                if bars:
                    speeds.append(float(bars[-1][2]))
            else:
                p.err.seek(0)
                print(f"  a round failed (exit {p.returncode}): {p.err.read()[-300:]}",
                      flush=True)
            p.err.close()
            seed += 1
            running.append(one_round(python, f"a{k}_{seed}", seed, args, env, work))
        time.sleep(0.05)
    wall = time.monotonic() - t0
    for p in running:
        finished = p.poll() == 0  # ended since the last look
        p.kill()
        p.wait()
        bars = _bars(p)
        if finished:
            done += 1
        elif bars and int(bars[-1][1]) > 0:  # its last bar: n of total iterations
            done += int(bars[-1][0]) / int(bars[-1][1])
        p.err.close()
    return {"places": k, "rounds": round(done, 2), "wall_s": round(wall, 1),
            "grasps_per_s": round(done * args.batch / wall, 3),
            "round_it_per_s": round(sum(speeds) / len(speeds), 2) if speeds else None}


def toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml(x)}" for k, x in v.items()) + " }"


def write_toml(path: Path, doc: dict) -> Path:
    top = [f"{k} = {toml(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{json.dumps(n)} = {toml(x)}" for n, x in v.items())
              for k, v in doc.items() if isinstance(v, dict)]
    path.write_text("\n".join(top) + "\n" + "\n".join(tables) + "\n")
    return path


def supervised(seconds: float, python: str, args, env, work: Path, dry: bool) -> dict:
    """The supervisor with auto for ``seconds``, then SIGINT: what it chose."""
    config = write_toml(work / "packing.toml", {
        "exp_name": "packing", "experiments_dir": str(work / "experiments"),
        "object_code_list": [f"gpu_check_obj{i}" for i in range(4)],
        "target_count_per_object": args.batch * 1000, "round_batch_size": args.batch,
        "num_iterations": args.iterations, "gpus": [0], "max_rounds": 100_000,
        "main": {"command": [python, str(CHILD), "--name", "{name}", "--object_code",
                             "{object_code}", "--batch_size", "{batch_size}",
                             "--num_iterations", "{num_iterations}", "--seed", "{seed}",
                             "--gpu", "{gpu}", "--jitter_strength", "0.1"],
                 "cwd": str(work / "BimanGrasp-Optimization"),
                 "env": {k: v for k, v in env.items() if k.startswith(("GPU_CHECK_",
                                                                       "EMULATOR_"))}},
        "gpu": {"probe": "emulator" if dry else "nvml", "max_rounds_per_gpu": "auto",
                "pack_window_s": 10.0, "pack_retest_s": 300.0},
        "disk": {"min_free_gib": 0.5},
    })
    log = open(work / "supervisor.jsonl", "w")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", str(config)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        # A drain waits for the rounds running; a second SIGINT stops them (they are run
        # again on a resume), so the budget holds within about a minute.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20.0)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60.0)
    log.close()
    events = [json.loads(line) for line in open(work / "supervisor.jsonl")
              if line.startswith("{")]
    manifest_path = work / "experiments" / "packing" / "manifest.json"
    if not manifest_path.exists():  # the supervisor did not start: its last lines say why
        tail = (work / "supervisor.jsonl").read_text()[-2000:]
        return {"exit": proc.returncode, "error": f"the supervisor did not run: {tail}"}
    gpu = json.loads(manifest_path.read_text())["gpus"].get("0", {})
    return {"exit": proc.returncode,
            "changes": [{k: e.get(k) for k in ("from", "to", "why")} for e in events
                        if e.get("event") == "packing_changed"],
            "level": gpu.get("level"), "gains": gpu.get("gains"),
            "sharing": gpu.get("sharing"), "grasps_per_s": gpu.get("rates"),
            "rounds_merged": sum(e.get("event") == "round_merged" for e in events),
            "out_of_memory": sum(e.get("event") == "round_out_of_memory" for e in events)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--budget-s", type=float, default=480.0, help="both parts together")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--dry", action="store_true")
    args = p.parse_args()
    if args.dry:
        args.batch, args.iterations = min(args.batch, 4), min(args.iterations, 10)
    work = args.out.resolve() / "packing_work"
    (work / "BimanGrasp-Optimization").mkdir(parents=True, exist_ok=True)
    python = os.environ.get("GPU_CHECK_PYTHON", sys.executable)
    env = child_env(args.dry, work)
    each = args.budget_s * 0.5 / 4
    rows = []
    print(f"Part A: 1-4 places, {each:.0f} s each, batch {args.batch}, "
          f"{args.iterations} iterations a round", flush=True)
    for k in (1, 2, 3, 4):
        rows.append(places(k, each, python, args, env, work))
        print(f"  {json.dumps(rows[-1])}", flush=True)
    one = rows[0]["grasps_per_s"] or 1.0
    print("\n| rounds at once | grasps/s (wall, start-ups included) | x one | "
          "each round's it/s |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['places']} | {r['grasps_per_s']:.2f} | {r['grasps_per_s'] / one:.2f} | "
              f"{r['round_it_per_s']} |")
    print(f"\nPart B: the supervisor, max_rounds_per_gpu = \"auto\", "
          f"{args.budget_s * 0.5:.0f} s", flush=True)
    result = supervised(args.budget_s * 0.5, python, args, env, work, args.dry)
    print(json.dumps(result, indent=1))
    (args.out / "packing_gpu.json").write_text(json.dumps({"places": rows, "auto": result},
                                                          indent=1))


if __name__ == "__main__":
    main()
