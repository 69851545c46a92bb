"""The real supervisor on the Slurm backend, steps and jobs, against the local backend:
python bench/slurm_backend.py [--rounds 48] [--base-s 2.0]

A Slurm cluster of 2 nodes x 4 fake GPUs on this machine (tests/slurmcluster.py, started
and stopped by this script) and the same config three times, differing only in where
rounds run:

- local: ``gpus = [0..7]``, ``[gpu] probe = "static"`` (8 slots on this machine);
- steps: ``[backend] kind = "slurm"``, the supervisor inside an ``sbatch`` allocation of
  2 nodes x 4 GPUs (mode "auto" -> steps);
- jobs: ``[backend] kind = "slurm", mode = "jobs", max_jobs = 8``, the supervisor outside
  any allocation, each round its own batch job.

Rounds are ``bench/uneven_main.py``: the emulator with EMULATOR_ITER_S set from the seed,
1x..4x a base, so every backend runs the same rounds of the same uneven lengths
(``--base-s 2``: 2-8 s, about 5 s on average).

Figures, per backend:
- makespan over the lower bound: first round start to last round end (the manifest's
  started_at/finished_at: for Slurm, dispatch to merge, queue time included); lower
  bound = max(work / 8, longest round), work = the sum of the children's own run times
  (uneven_main.py's first statement to the emulator's return: every overhead outside the
  child counts against the backend);
- latency from a round's end to the next round's start on that GPU (node and GPU as the
  round saw them), median and p90: from ``round_finished`` (the child's exit seen, its
  result read) to the next round's start there: local ``round_started`` (the child about
  to be spawned), Slurm ``job_running`` (the job or step running on its node: its task's
  first line read); and, child side, a child's end to the next child's first statement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]
from ray_backend import Head, child_times, gaps, percentile, stamp, write_config  # noqa: E402
from slurmcluster import SlurmCluster, missing  # noqa: E402

NODES, GPUS = 2, 4
SLOTS = NODES * GPUS
WAIT_S = 600.0


class Events:
    """A run's JSON events and exit code, whichever way it ran."""

    def __init__(self, events: list[dict[str, Any]], code: int, wall: float) -> None:
        self.events, self.code, self.wall = events, code, wall

    def named(self, *names: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") in names]


def run_local(config: Path) -> Events:
    head = Head(config)
    return Events(head.events, head.code, head.wall)


def run_in_allocation(cluster: SlurmCluster, config: Path) -> Events:
    """``sbatch`` the supervisor into a 2 x 4 GPU allocation; its events from a file."""
    root = config.parent
    out, rc = root / "events.jsonl", root / "rc"
    script = root / "run.sh"
    script.write_text(f"#!/bin/sh\n{sys.executable} -m supervisor {config} --log-format json "
                      f"> {out} 2> {root}/supervisor.stderr\necho $? > {rc}.tmp && "
                      f"mv {rc}.tmp {rc}\n")
    t0 = time.time()
    cluster.client("sbatch", "--parsable", f"--nodes={NODES}", f"--ntasks-per-node={GPUS}",
                   f"--gres=gpu:{GPUS}", "--cpus-per-task=2", "--no-kill",
                   f"--output={root}/job.out", f"--chdir={ROOT}",
                   f"--export=ALL,PYTHONPATH={ROOT}", str(script))
    deadline = time.monotonic() + WAIT_S
    while not rc.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the allocation's supervisor did not end in {WAIT_S:g} s")
        time.sleep(0.2)
    events = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return Events(events, int(rc.read_text()), time.time() - t0)


class Figures:
    def __init__(self, label: str, root: Path, run: Events) -> None:
        self.label, self.run = label, run
        m = json.loads((root / "exp" / "bench" / "manifest.json").read_text())
        rnds = [r for o in m["objects"].values() for r in o["rounds"].values()
                if r.get("started_at") and r.get("finished_at")]
        self.rounds = len(rnds)
        self.makespan = max(r["finished_at"] for r in rnds) - min(r["started_at"] for r in rnds)
        child = child_times(root)
        durations = [c["end"] - c["start"] for c in child.values()]
        self.work = sum(durations)
        self.bound = max(self.work / SLOTS, max(durations))
        self.longest = max(durations)
        gpu = lambda e: (e.get("node", "local"), str(e.get("gpu")))  # noqa: E731
        begun = "job_running" if run.named("job_running") else "round_started"
        starts = {e["round"]: e for e in run.named(begun)}
        ends = {e["round"]: e for e in run.named("round_finished")}
        spans: dict[Any, list[tuple[float, float]]] = {}
        for name, e in ends.items():
            if name in starts:
                spans.setdefault(gpu(e), []).append((stamp(starts[name]), stamp(e)))
        self.latency, self.begun = gaps(spans), begun
        cspans: dict[Any, list[tuple[float, float]]] = {}
        for c in child.values():
            cspans.setdefault((c.get("node", "local"), c["gpu"]), []).append(
                (c["start"], c["end"]))
        self.child_gap = gaps(cspans)
        self.noise = {n: len(run.named(n)) for n in ("round_failed", "round_interrupted")}

    @property
    def ratio(self) -> float:
        return self.makespan / self.bound

    def lines(self) -> list[str]:
        ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
        lat, cg = self.latency, self.child_gap
        return [
            f"{self.label}: exit {self.run.code}, {self.rounds} rounds, "
            f"failed/interrupted {self.noise}, whole run {self.run.wall:.1f} s",
            f"  makespan {self.makespan:.2f} s; children's work {self.work:.1f} s, longest "
            f"{self.longest:.2f} s, bound {self.bound:.2f} s -> ratio {self.ratio:.3f}",
            f"  latency round_finished -> next {self.begun} on that GPU (n={len(lat)}): median "
            f"{ms(statistics.median(lat))} ms, p90 {ms(percentile(lat, 0.9))} ms",
            f"  child end -> next child start on that GPU (n={len(cg)}): median "
            f"{ms(statistics.median(cg))} ms, p90 {ms(percentile(cg, 0.9))} ms"]


def config_for(root: Path, rounds: int, base_s: float, backend: dict[str, Any]) -> Path:
    path = write_config(root, rounds, base_s, backend)
    text = path.read_text().replace('"EMULATOR_STARTUP_S" = "0.05"', f'"EMULATOR_STARTUP_S" = '
                                    f'"0.05", "PYTHONPATH" = "{ROOT}"')
    path.write_text(text)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=48, help="rounds in all, a multiple of 4")
    parser.add_argument("--base-s", type=float, default=2.0,
                        help="a round's optimisation time at 1x; rounds take 1x-4x (default 2)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the experiments (manifests, logs, child times) and say where")
    args = parser.parse_args()
    if missing():
        print(f"Slurm is not installed ({', '.join(missing())}): apt-get install slurmctld "
              "slurmd slurm-client munge", file=sys.stderr)
        return 2
    temp = Path(tempfile.mkdtemp(prefix="slurmb"))
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.rounds} rounds of bench/uneven_main.py ({args.base_s:g}-{4 * args.base_s:g} s "
          f"of iterations from the seed) on {SLOTS} GPUs; {os.cpu_count()} CPU cores, load "
          f"average {load}. ratio = makespan / max(children's work / {SLOTS}, longest round).",
          flush=True)
    figures = {}
    local_root = temp / "local"
    figures["local"] = Figures(f"local ({SLOTS} slots)", local_root, run_local(config_for(
        local_root, args.rounds, args.base_s, {"gpus": list(range(SLOTS)),
                                               "backend": {"kind": "local"}})))
    for line in figures["local"].lines():
        print(line, flush=True)
    cluster = SlurmCluster(temp / "cluster", nodes=NODES, gpus=GPUS, cpus=8)
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        for mode in ("steps", "jobs"):
            root = temp / mode
            backend = {"kind": "slurm", "mode": "auto" if mode == "steps" else "jobs",
                       "max_jobs": SLOTS}
            config = config_for(root, args.rounds, args.base_s, {"gpus": "all",
                                                                  "backend": backend})
            run = run_in_allocation(cluster, config) if mode == "steps" else run_local(config)
            figures[mode] = Figures(f"slurm {mode} ({NODES} nodes x {GPUS} GPUs)", root, run)
            for line in figures[mode].lines():
                print(line, flush=True)
    finally:
        cluster.stop()
        cluster.remove()
        if args.keep:
            print(f"kept: {temp}")
        else:
            shutil.rmtree(temp, ignore_errors=True)
    local = figures["local"].ratio
    for mode, goal_ratio, goal_ms in (("steps", 1.05, 300), ("jobs", 1.15, 1500)):
        f = figures[mode]
        median = statistics.median(f.latency) * 1000
        print(f"{mode}: ratio {f.ratio:.3f} vs local {local:.3f} ({(f.ratio / local - 1):+.1%}, "
              f"goal {goal_ratio - 1:+.0%}: {'met' if f.ratio <= local * goal_ratio else 'MISSED'})"
              f"; latency median {median:.0f} ms (goal {goal_ms} ms: "
              f"{'met' if median < goal_ms else 'MISSED'})")
    ok = all(f.run.code == 0 for f in figures.values()) and not any(
        math.isnan(f.ratio) for f in figures.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
