"""The Ray backend against local subprocesses: python bench/ray_backend.py [--rounds 48]

A loopback Ray cluster of 3 nodes x 4 logical GPUs (ray.cluster_utils.Cluster, 127.0.0.1
only) runs emulator rounds of uneven length through supervisor.raycluster; then the same
rounds run through runner.run_child on 12 local slots. Each slot takes the next round as
soon as its last one ended (the same list, the same order, for both). Printed per backend:
makespan and its ratio to the lower bound max(total work / 12, longest round) (work:
measured child run times, start to exit, of the local run; and of its own run), launch latency (a child's exit
seen by the head to the next child's start on that slot, median and p90), the head's RSS.
The cluster is stopped with cluster.shutdown() and its temporary folder removed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # loopback; Ray reads it on import

import anyio  # noqa: E402

from supervisor import runner  # noqa: E402
from supervisor.raycluster import RayCluster, Slot, connect  # noqa: E402

NODES, GPUS_PER_NODE = 3, 4
ITER_S = 0.01


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mib(root: int) -> float:
    """RSS of ``root``'s descendants (the cluster's processes, the children)."""
    total = 0.0
    for pid in descendants(root):
        try:
            total += rss_mib(pid)
        except OSError:
            pass
    return total


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and its descendants, children they reaped included."""
    ticks = 0
    for pid in descendants(root) | {root}:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(f) for f in fields[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


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


def argv(name: str, gpu: int, iterations: int) -> list[str]:
    return [sys.executable, "-m", "supervisor.emulator", "--name", name, "--object_code",
            "obj", "--batch_size", "4", "--num_iterations", str(iterations), "--seed", "1",
            "--gpu", str(gpu), "--jitter_strength", "0.1"]


class Schedule:
    """Slots pull rounds from one list; starts, ends and child run times are recorded."""

    def __init__(self, jobs: list[int]) -> None:
        self.jobs = list(jobs)
        self.next = 0
        self.latency: list[float] = []
        self.work: list[float] = []
        self.first = self.last = 0.0

    def take(self) -> tuple[int, int] | None:
        if self.next >= len(self.jobs):
            return None
        self.next += 1
        return self.next - 1, self.jobs[self.next - 1]

    async def slot_loop(self, run_one) -> None:
        ended: float | None = None
        while (job := self.take()) is not None:
            started: list[float] = []

            def on_start(pid: int) -> None:
                started.append(time.monotonic())
                if ended is not None:
                    self.latency.append(started[0] - ended)

            ok = await run_one(job, on_start)
            ended = time.monotonic()
            assert ok, job
            self.work.append(ended - started[0])
            self.last = max(self.last, ended)

    def bound(self, slots: int) -> float:
        return max(sum(self.work) / slots, max(self.work))

    def figures(self, label: str, bound: float, slots: int, rss: float, extra: str = "") -> str:
        makespan = self.last - self.first
        lat = sorted(self.latency)
        p90 = lat[min(len(lat) - 1, int(0.9 * len(lat)))]
        return (f"{label:<6} makespan {makespan:5.2f} s = {makespan / bound:4.2f} x the lower "
                f"bound ({makespan / self.bound(slots):4.2f} x its own: "
                f"{self.bound(slots):5.2f} s)   launch latency median "
                f"{statistics.median(lat) * 1000:5.0f} ms, p90 {p90 * 1000:5.0f} ms   "
                f"head RSS {rss:5.0f} MiB{extra}")


async def run_ray(rc: RayCluster, jobs: list[int], base: Path, env: dict[str, str]) -> Schedule:
    sched = Schedule(jobs)

    def runner_for(slot: Slot):
        async def run_one(job: tuple[int, int], on_start) -> bool:
            name = f"ray{job[0]}"
            exit_ = await rc.run_round(slot, argv(name, slot.gpu, job[1]), os.getcwd(), env,
                                       base, name, "obj", 5, 0, 0, lambda s, line: None,
                                       on_start, anyio.Event(), anyio.Event(), False)
            return exit_.returncode == 0 and exit_.result is not None
        return run_one

    sched.first = time.monotonic()
    async with anyio.create_task_group() as tg:
        for slot in rc.slots():
            tg.start_soon(sched.slot_loop, runner_for(slot))
    return sched


async def run_local(slots: int, jobs: list[int], base: Path, env: dict[str, str]) -> Schedule:
    sched = Schedule(jobs)
    full_env = {**os.environ, **env}

    def runner_for(gpu: int):
        async def run_one(job: tuple[int, int], on_start) -> bool:
            name = f"local{job[0]}"
            exit_ = await runner.run_child(
                argv(name, gpu, job[1]), cwd=Path.cwd(), on_line=lambda s, line: None,
                env={**full_env, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                     "CUDA_VISIBLE_DEVICES": str(gpu)}, on_start=on_start, grace_s=5)
            result = base / name / "results" / "obj.npy"
            ok = exit_.returncode == 0 and result.exists()
            shutil.rmtree(base / name, ignore_errors=True)
            return ok
        return run_one

    sched.first = time.monotonic()
    async with anyio.create_task_group() as tg:
        for gpu in range(slots):
            tg.start_soon(sched.slot_loop, runner_for(gpu))
    return sched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=48)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    jobs = [rng.randint(40, 300) for _ in range(args.rounds)]  # 0.4 s to 3 s of iterations
    temp = Path(tempfile.mkdtemp(prefix="rayb"))
    base = temp / "experiments"
    env = {"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": str(ITER_S),
           "EMULATOR_EXPERIMENTS_BASE": str(base), "PYTHONUNBUFFERED": "1"}
    from ray.cluster_utils import Cluster
    import ray

    shared = Path(tempfile.gettempdir()) / "ray"  # Cluster writes its address there
    made_shared = not shared.exists()
    shared.mkdir(exist_ok=True)
    rss0 = rss_mib()
    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": GPUS_PER_NODE, "include_dashboard": False,
        "temp_dir": str(temp)})
    try:
        for _ in range(NODES - 1):
            cluster.add_node(num_cpus=0, num_gpus=GPUS_PER_NODE)
        rc = connect(cluster.address)
        added, _ = anyio.run(rc.refresh)
        assert len(added) == NODES * GPUS_PER_NODE, added
        up = time.monotonic() - t0
        time.sleep(2.0)  # settle, then measure what the idle cluster costs
        cpu0 = tree_cpu_s(os.getpid())
        time.sleep(5.0)
        idle_cpu = (tree_cpu_s(os.getpid()) - cpu0) / 5.0
        cpu0 = tree_cpu_s(os.getpid())
        ray_sched = anyio.run(run_ray, rc, jobs, base, env)
        ray_cpu = tree_cpu_s(os.getpid()) - cpu0
        ray_rss = rss_mib()
        cluster_rss = tree_rss_mib(os.getpid())
    finally:
        ray.shutdown()
        cluster.shutdown()
    cpu0 = tree_cpu_s(os.getpid())
    local_sched = anyio.run(run_local, NODES * GPUS_PER_NODE, jobs, base, env)
    local_cpu = tree_cpu_s(os.getpid()) - cpu0
    local_rss = rss_mib()
    for _ in range(50):  # Ray's exiting processes may still write their logs for a moment
        shutil.rmtree(temp, ignore_errors=True)
        if not temp.exists():
            break
        time.sleep(0.1)
    if made_shared and not any(shared.iterdir()):
        shared.rmdir()

    slots = NODES * GPUS_PER_NODE
    bound = local_sched.bound(slots)
    nominal = max(sum(jobs) * ITER_S / slots, max(jobs) * ITER_S)
    print(f"{args.rounds} emulator rounds of {min(jobs) * ITER_S:.1f}-{max(jobs) * ITER_S:.1f} s "
          f"(iterations only; {sum(jobs) * ITER_S:.1f} s in all) on {slots} slots, "
          f"{os.cpu_count()} CPU cores")
    print(f"lower bound {bound:.2f} s = max(work / {slots}, longest round), work = the local "
          f"children's measured run times (nominal, iterations only: {nominal:.2f} s); "
          "'its own': the same from that backend's children")
    print(f"ray cluster: {NODES} nodes x {GPUS_PER_NODE} logical GPUs, up with its "
          f"{slots} actors in {up:.1f} s; its processes' RSS {cluster_rss:.0f} MiB, "
          f"idle CPU {idle_cpu * 100:.0f}% of one core")
    print(ray_sched.figures("ray", bound, slots, ray_rss, f" (before Ray {rss0:.0f} MiB)"))
    print(local_sched.figures("local", bound, slots, local_rss))
    print(f"CPU per round (head, cluster, children): ray {ray_cpu / args.rounds:.2f} s, "
          f"local {local_cpu / args.rounds:.2f} s")


if __name__ == "__main__":
    main()
