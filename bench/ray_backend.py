"""The real supervisor on the Ray backend against the local backend:
python bench/ray_backend.py [--rounds 48] [--base-s 1.0]

Both runs are ``python -m supervisor CONFIG --log-format json`` subprocesses with the same
config (4 objects x rounds/4 rounds each: target_count_per_object = rounds/4 x
round_batch_size, no [filter], no dedup), differing only in where rounds run:

- local: ``gpus = [0..11]``, ``[gpu] probe = "static"`` (12 slots on this machine);
- ray: ``gpus = "all"``, ``[backend] kind = "ray"``, address = a loopback cluster of 3 nodes
  x 4 logical GPUs (ray.cluster_utils.Cluster on 127.0.0.1, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0),
  started before that run and stopped with cluster.shutdown() after it (temp folder removed).

Rounds are ``bench/uneven_main.py``: the emulator with EMULATOR_ITER_S set from the seed,
1x..4x a base, so both backends run the same 48 rounds of the same uneven lengths.

Figures, per backend:
- makespan: first round start to last round end (manifest.json started_at/finished_at);
  lower bound = max(work / 12, longest round), work = sum of the rounds' durations. Two
  bounds: from the manifest's per-round times (the supervisor's own, spawn and Ray's
  per-round overhead included), and from the children's own run times (uneven_main.py's
  first statement to the emulator's return: overhead outside the child counts against
  the backend).
- launch latency: on each GPU slot, from the ``round_finished`` log event of a round to
  the ``round_started`` event of the next round there (the JSON events' ``timestamp``,
  structlog's ISO time, microseconds). round_finished is logged once the child exited and
  its result was read; round_started just before the child is spawned (for Ray: before the
  task is sent to the node). Also the child-side gap (a child's end to the next child's
  first statement on that slot), which adds interpreter exit and start-up and spawning.
- the head's peak RSS: VmHWM of the supervisor process (/proc/PID/status, sampled).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback; Ray reads it on import

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from conftest import write_toml  # noqa: E402

WRAPPER = Path(__file__).resolve().parent / "uneven_main.py"
NODES, GPUS_PER_NODE = 3, 4
SLOTS = NODES * GPUS_PER_NODE
OBJECTS, BATCH, ITERATIONS = 4, 4, 100
HEAD_TIMEOUT_S = 300.0


# -- config ---------------------------------------------------------------------------
def write_config(root: Path, rounds: int, base_s: float, backend: dict[str, Any]) -> Path:
    """The same experiment for both backends; ``backend`` adds gpus and [backend]."""
    (root / "BimanGrasp-Optimization").mkdir(parents=True)
    times = root / "times"
    times.mkdir()
    command = ["{python}", str(WRAPPER), "--name", "{name}", "--object_code",
               "{object_code}", "--batch_size", "{batch_size}", "--num_iterations",
               "{num_iterations}", "--seed", "{seed}", "--gpu", "{gpu}",
               "--jitter_strength", "0.1"]
    top = {"exp_name": "bench", "experiments_dir": "exp",
           "object_code_list": [f"obj_{i}" for i in range(OBJECTS)],
           "target_count_per_object": rounds // OBJECTS * BATCH,
           "round_batch_size": BATCH, "num_iterations": ITERATIONS, "seed_base": 1000,
           "max_rounds": 1000, "keep_intermediate": False, "gpus": backend["gpus"]}
    tables = {
        "main": {"command": command, "cwd": "BimanGrasp-Optimization", "env": {
            "EMULATOR_STARTUP_S": "0.05", "BENCH_BASE_ITER_S": repr(base_s / ITERATIONS),
            "BENCH_TIMES_DIR": str(times)}},
        "gpu": {"probe": "static", "poll_interval_s": 1.0, "max_rounds_per_gpu": 1},
        "timeouts": {"grace_s": 5.0},
        "disk": {"min_free_gib": 0.01},
        "backend": backend["backend"],
    }
    return write_toml(root / "config.toml", {**top, **tables})


# -- /proc ----------------------------------------------------------------------------
def proc_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def descendants(root: int) -> set[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    tree, todo = set(), [root]
    while todo:
        parent = todo.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        tree.update(kids)
        todo += kids
    return tree


def cluster_pss_mib(exclude: int) -> float:
    """PSS of this process's descendants (Ray's GCS, raylets, workers, actors) but the
    supervisor ``exclude`` and the rounds' processes."""
    total = 0
    for pid in descendants(os.getpid()) - {exclude}:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"uneven_main" in cmd or b"launch.py" in cmd:
                continue
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            pass
    return total / 1024


# -- one supervisor run ---------------------------------------------------------------
class Head:
    """``python -m supervisor CONFIG --log-format json``: its events, exit, peak RSS."""

    def __init__(self, config: Path, extra_sample: Callable[[int], float] | None = None):
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.stderr_path = config.parent / "supervisor.stderr"
        self.t0 = time.time()
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", str(config), "--log-format", "json"],
                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err,
                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
        self.events: list[dict[str, Any]] = []
        reader = threading.Thread(target=self._read, daemon=True)
        reader.start()
        self.hwm_kib = 0
        self.extra_peak = 0.0
        last_extra = 0.0
        deadline = time.monotonic() + HEAD_TIMEOUT_S
        while self.proc.poll() is None:
            self.hwm_kib = max(self.hwm_kib, proc_kib(self.proc.pid, "VmHWM") or 0)
            if extra_sample is not None and time.monotonic() - last_extra >= 1.0:
                last_extra = time.monotonic()
                self.extra_peak = max(self.extra_peak, extra_sample(self.proc.pid))
            if time.monotonic() > deadline:
                self.stop()
                break
            time.sleep(0.1)
        self.code = self.proc.wait()
        self.wall = time.time() - self.t0
        reader.join(10)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def stop(self) -> None:
        """Past the time limit: drain, stop the rounds, then kill (this pid only)."""
        print(f"supervisor {self.proc.pid} ran past {HEAD_TIMEOUT_S:.0f} s: stopping it",
              file=sys.stderr)
        for _ in range(2):
            self.proc.send_signal(signal.SIGINT)
            time.sleep(1.0)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def named(self, *names: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") in names]


def stamp(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def gaps(per_slot: dict[Any, list[tuple[float, float]]]) -> list[float]:
    """(start, end) per slot -> each end to the next start on that slot."""
    out = []
    for spans in per_slot.values():
        spans.sort()
        out += [b[0] - a[1] for a, b in zip(spans, spans[1:])]
    return out


def child_times(root: Path) -> dict[str, dict[str, Any]]:
    """Round name -> the children's own record (bench/uneven_main.py's times/*.json) of its
    last successful attempt."""
    child: dict[str, dict[str, Any]] = {}
    for f in (root / "times").glob("*.json"):
        rec = json.loads(f.read_text())
        if rec["ok"] and rec["start"] > child.get(rec["name"], {}).get("start", 0):
            child[rec["name"]] = rec
    return child


class Figures:
    def __init__(self, label: str, root: Path, head: Head) -> None:
        self.label, self.head = label, head
        exp = root / "exp" / "bench"
        m = json.loads((exp / "manifest.json").read_text())
        rnds = [r for obj in m["objects"].values() for r in obj["rounds"].values()]
        self.statuses: dict[str, int] = {}
        for r in rnds:
            self.statuses[r["status"]] = self.statuses.get(r["status"], 0) + 1
        ran = [r for r in rnds if r.get("started_at") and r.get("finished_at")]
        self.rounds = len(ran)
        self.retried = sum(len(r.get("failures") or []) for r in rnds)
        first = min(r["started_at"] for r in ran)
        self.makespan = max(r["finished_at"] for r in ran) - first
        head_d = [r["finished_at"] - r["started_at"] for r in ran]
        self.work_m, self.bound_m = sum(head_d), max(sum(head_d) / SLOTS, max(head_d))
        slot_of = {r["name"]: str(r["gpu"]) for r in ran}
        # Children's own times (bench/uneven_main.py), per round name (attempts: the last).
        child = child_times(root)
        child_d = [c["end"] - c["start"] for c in child.values()]
        self.work_c = sum(child_d)
        self.bound_c = max(self.work_c / SLOTS, max(child_d)) if child_d else math.nan
        self.child_min, self.child_max = min(child_d), max(child_d)
        # Log events: launch latency on each slot.
        key = lambda e: (e.get("node"), e.get("gpu"))  # noqa: E731
        started = {e["round"]: e for e in head.named("round_started")}
        finished = {e["round"]: e for e in head.named("round_finished")}
        spans: dict[Any, list[tuple[float, float]]] = {}
        for name, e in started.items():
            if name in finished:
                spans.setdefault(key(e), []).append((stamp(e), stamp(finished[name])))
        self.latency = gaps(spans)
        cspans: dict[Any, list[tuple[float, float]]] = {}
        for name, c in child.items():
            cspans.setdefault(slot_of.get(name), []).append((c["start"], c["end"]))
        self.child_gap = gaps(cspans)
        # Where the gap goes: child end -> round_finished -> round_started -> child start.
        self.seen_exit = [stamp(finished[n]) - c["end"] for n, c in child.items()
                          if n in finished]
        self.spawn = [c["start"] - stamp(started[n]) for n, c in child.items() if n in started]
        starts = head.named("round_started")
        self.startup = (min(stamp(e) for e in starts) - head.t0) if starts else math.nan
        self.noise = {n: len(head.named(n)) for n in ("round_failed", "round_interrupted",
                                                       "round_retry", "round_stopped")}

    @property
    def ratio_m(self) -> float:
        return self.makespan / self.bound_m

    @property
    def ratio_c(self) -> float:
        return self.makespan / self.bound_c

    def lines(self) -> list[str]:
        ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
        lat, cg = self.latency, self.child_gap
        noise = ", ".join(f"{k} {v}" for k, v in self.noise.items() if v) or "none"
        return [
            f"{self.label}: exit {self.head.code}, {self.rounds} rounds "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.statuses.items()))}; "
            f"failures/retries/stops: {noise}), start-up {self.startup:.1f} s to the first "
            f"round, whole run {self.head.wall:.1f} s",
            f"  makespan {self.makespan:.2f} s; manifest round times: work {self.work_m:.1f} s,"
            f" bound {self.bound_m:.2f} s -> ratio {self.ratio_m:.3f}; children's own times"
            f" ({self.child_min:.2f}-{self.child_max:.2f} s): work {self.work_c:.1f} s, "
            f"bound {self.bound_c:.2f} s -> ratio {self.ratio_c:.3f}",
            f"  launch latency (round_finished -> next round_started, same slot, n={len(lat)}):"
            f" median {ms(statistics.median(lat))} ms, p90 {ms(percentile(lat, 0.9))} ms",
            f"  child end -> next child start (same slot, n={len(cg)}): median "
            f"{ms(statistics.median(cg))} ms, p90 {ms(percentile(cg, 0.9))} ms  [child end -> "
            f"round_finished median {ms(statistics.median(self.seen_exit))} ms; round_started"
            f" -> child start median {ms(statistics.median(self.spawn))} ms]",
            f"  head peak RSS (supervisor VmHWM) {self.head.hwm_kib / 1024:.0f} MiB",
        ]


# -- the loopback cluster -------------------------------------------------------------
class Loopback:
    """3 nodes x 4 logical GPUs on 127.0.0.1; shutdown() stops it and removes its files."""

    def __init__(self, temp: Path) -> None:
        import ray
        from ray._private import ray_constants
        from ray.cluster_utils import Cluster
        self.ray = ray
        ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before
        self.temp = temp
        # Cluster writes its address to /tmp/ray/ray_current_cluster whatever temp_dir
        # says, and fails where that folder does not exist.
        self.shared = Path(tempfile.gettempdir()) / "ray"
        self.made_shared = not self.shared.exists()
        self.current = self.shared / "ray_current_cluster"
        self.had_current = self.current.exists()
        self.shared.mkdir(exist_ok=True)
        self.cluster = None
        t0 = time.monotonic()
        try:
            self.cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "num_gpus": GPUS_PER_NODE, "include_dashboard": False,
                "temp_dir": str(temp)})
            for _ in range(NODES - 1):
                self.cluster.add_node(num_cpus=0, num_gpus=GPUS_PER_NODE)
            self.cluster.wait_for_nodes()
        except BaseException:
            self.shutdown()
            raise
        self.up_s = time.monotonic() - t0
        self.address = self.cluster.address

    def shutdown(self) -> None:
        self.ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()
            self.cluster = None
        for _ in range(50):  # Ray's exiting processes may still write their logs a moment
            shutil.rmtree(self.temp, ignore_errors=True)
            if not self.temp.exists():
                break
            time.sleep(0.1)
        if not self.had_current:
            self.current.unlink(missing_ok=True)
        if self.made_shared:
            try:
                self.shared.rmdir()  # only if it is still empty
            except OSError:
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=48,
                        help=f"rounds in all, a multiple of {OBJECTS} (default 48)")
    parser.add_argument("--base-s", type=float, default=1.0,
                        help="a round's optimisation time at 1x; rounds take 1x-4x (default 1)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the experiments (manifests, logs, child times) and say where")
    args = parser.parse_args()
    if args.rounds <= 0 or args.rounds % OBJECTS:
        parser.error(f"--rounds must be a positive multiple of {OBJECTS}")
    temp = Path(tempfile.mkdtemp(prefix="rayb"))  # short: Ray's socket paths stay < 108
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{args.rounds} rounds ({OBJECTS} objects x {args.rounds // OBJECTS}) of "
              f"bench/uneven_main.py ({ITERATIONS} iterations at EMULATOR_ITER_S = "
              f"{args.base_s / ITERATIONS:g} s x U(1, 4) from the seed: {args.base_s:g}-"
              f"{4 * args.base_s:g} s of iterations, EMULATOR_STARTUP_S 0.05) on {SLOTS} GPU "
              f"slots; {os.cpu_count()} CPU cores, load average {load}. Each backend: one "
              "`python -m supervisor CONFIG --log-format json` run, the same config.")
        print("ratio = makespan / max(work / 12, longest round); makespan = first round "
              "start to last round end (manifest started_at/finished_at); work = the sum of "
              "the manifest's round times (dispatch to merge: spawn and Ray's transport "
              "included), and, second figure, of the children's own run times (uneven_main.py"
              "'s first statement to the emulator's return: every overhead outside the child "
              "counts against the backend).")
        print("launch latency = a round's round_finished to the next round_started on the same"
              " slot (the JSON events' structlog ISO timestamps, us: exit seen and result read"
              " -> the next child about to be spawned); child end -> next child start adds the"
              " child's exit and the spawn (launcher, interpreter start-up; Ray: the task "
              "sent to the node). Head RSS = the supervisor process's VmHWM (/proc, sampled "
              "every 0.1 s).", flush=True)
        local_root = temp / "local"
        local_cfg = write_config(local_root, args.rounds, args.base_s, {
            "gpus": list(range(SLOTS)), "backend": {"kind": "local"}})
        local = Figures("local (12 slots)", local_root, Head(local_cfg))
        for line in local.lines():
            print(line, flush=True)

        cluster = Loopback(temp / "ray-cluster")
        try:
            ray_root = temp / "ray"
            ray_cfg = write_config(ray_root, args.rounds, args.base_s, {
                "gpus": "all", "backend": {"kind": "ray", "address": cluster.address}})
            idle_pss = cluster_pss_mib(-1)
            head = Head(ray_cfg, extra_sample=cluster_pss_mib)
        finally:
            cluster.shutdown()
        ray = Figures(f"ray ({NODES} nodes x {GPUS_PER_NODE} GPUs)", ray_root, head)
        for line in ray.lines():
            print(line, flush=True)
        print(f"  Ray cluster: up in {cluster.up_s:.1f} s; its processes' PSS {idle_pss:.0f} "
              f"MiB idle, peak {head.extra_peak:.0f} MiB during the run (GCS, raylets, the "
              f"{SLOTS} GPU actors; rounds excluded)")

        within = ray.ratio_m <= local.ratio_m * 1.05
        within_c = ray.ratio_c <= local.ratio_c * 1.05
        print(f"Ray backend within 5 % of the local backend's makespan ratio: "
              f"{'yes' if within else 'no'} (ray {ray.ratio_m:.3f} vs local {local.ratio_m:.3f},"
              f" {(ray.ratio_m / local.ratio_m - 1) * 100:+.1f} %; against the children's own "
              f"times: {'yes' if within_c else 'no'}, ray {ray.ratio_c:.3f} vs local "
              f"{local.ratio_c:.3f}, {(ray.ratio_c / local.ratio_c - 1) * 100:+.1f} %)")
        med = {f.label.split()[0]: statistics.median(f.latency) * 1000 for f in (ray, local)}
        print(f"launch latency median under 100 ms: "
              f"{'yes' if med['ray'] < 100 else 'no'} for ray ({med['ray']:.0f} ms), "
              f"{'yes' if med['local'] < 100 else 'no'} for local ({med['local']:.0f} ms)")
        for f in (local, ray):
            if f.head.code != 0:
                print(f"{f.label}: the supervisor exited {f.head.code}; its stderr:\n"
                      + f.head.stderr_path.read_text()[-2000:], file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept: {temp}/local and {temp}/ray (config.toml, exp/bench/, times/)")
        else:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
