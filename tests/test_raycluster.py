"""The Ray backend on a loopback cluster (ray.cluster_utils.Cluster, logical GPUs).

One cluster for the module: a head and one node with 2 GPUs and 1 CPU each (4 slots, 2
CPUs), a third node added and removed by the node-lost test. It binds to 127.0.0.1 only
(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for every process) and is stopped with
cluster.shutdown(): never `ray stop`, never a kill by name.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import anyio
import pytest

from supervisor.backends import runner
from supervisor.gpus.fake import FakeProbe
from supervisor.gpus.probe import Reading
from supervisor.gpus.reads import read_gpus
from supervisor.backends.ray.cluster import RayCluster
from supervisor.backends.ray.connect import RayMissing, connect
from supervisor.backends.ray.remote import RemoteExit, Slot
from supervisor.backends.ray.node import GpuActor

from raytest import loopback_cluster, needs_ray

pytestmark = [pytest.mark.anyio, needs_ray]
FREE = {0: 1000, 1: 1001}


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, Any]]:
    import ray
    with loopback_cluster({"num_cpus": 1, "num_gpus": 2},
                          {"num_cpus": 1, "num_gpus": 2}) as (cluster, temp):
        sigterm = signal.getsignal(signal.SIGTERM)
        rc = connect(cluster.address, probe_factory=functools.partial(FakeProbe, FREE))
        sigterm_kept = signal.getsignal(signal.SIGTERM) is sigterm
        anyio.run(rc.refresh)
        yield {"cluster": cluster, "rc": rc, "base": temp / "experiments", "ray": ray,
               "sigterm_kept": sigterm_kept}


def emulator(name: str, gpu: int, iterations: int = 5) -> list[str]:
    return [sys.executable, "-m", "supervisor.emulator", "--name", name, "--object_code",
            "obj", "--batch_size", "4", "--num_iterations", str(iterations), "--seed", "1",
            "--gpu", str(gpu), "--jitter_strength", "0.1"]


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def processes_named(name: str) -> list[int]:
    """Pids whose command line holds ``name`` (each test's names are unique)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if name.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


async def gone(name: str, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while processes_named(name) and time.monotonic() < deadline:
        await anyio.sleep(0.05)
    return not processes_named(name)


def ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Round:
    """One run_round call with its lines, start and timings recorded."""

    def __init__(self, env: dict[str, Any], slot: Slot, argv: list[str] | None = None,
                 name: str | None = None, iter_s: float = 0.001, **kw: Any) -> None:
        self.env, self.slot = env, slot
        self.name = name or unique("r")
        self.argv = argv or emulator(self.name, slot.gpu)
        self.child_env = {"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": str(iter_s),
                          "EMULATOR_EXPERIMENTS_BASE": str(env["base"]), **kw.pop("extra", {})}
        self.kw = {"grace_s": 2.0, "timeout_s": 0.0, "stall_timeout_s": 0.0,
                   "keep_folder": False, **kw}
        self.lines: list[tuple[str, str]] = []
        self.pid: int | None = None
        self.parent: int | None = None
        self.started = anyio.Event()
        self.start_t = self.end_t = 0.0
        self.stop, self.kill = anyio.Event(), anyio.Event()

    async def printed(self, text: str) -> None:
        await self.started.wait()
        while not any(text in line for _, line in self.lines):
            await anyio.sleep(0.02)

    def on_start(self, pid: int) -> None:
        self.pid, self.parent, self.start_t = pid, ppid(pid), time.monotonic()
        self.started.set()

    async def run(self) -> RemoteExit:
        rc: RayCluster = self.env["rc"]
        with anyio.fail_after(60):
            exit_ = await rc.run_round(
                self.slot, self.argv, os.getcwd(), self.child_env, self.env["base"], self.name,
                "obj", on_line=lambda s, line: self.lines.append((s, line)),
                on_start=self.on_start, stop=self.stop, kill=self.kill, **self.kw)
        self.end_t = time.monotonic()
        return exit_


def listening_sockets(pids: set[int]) -> set[str]:
    """Local addresses of the TCP sockets in LISTEN state that ``pids`` hold."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            pass
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A" and cols[9] in inodes:
                found.add(cols[1].split(":")[0])
    return found


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (parent := ppid(int(entry.name))) is not None:
            children.setdefault(parent, []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


# -- the cluster ------------------------------------------------------------------------
def test_loopback_only(env: dict[str, Any]) -> None:
    assert env["cluster"].address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in env["ray"].nodes() if n["Alive"]} == {"127.0.0.1"}
    addresses = listening_sockets(descendants(os.getpid()))
    # 127.0.0.1, ::1, ::ffff:127.0.0.1 (never 0.0.0.0, :: or the machine's address)
    loopback = {"0100007F", "00000000000000000000000001000000",
                "0000000000000000FFFF00000100007F"}
    assert addresses and addresses <= loopback, addresses


def test_slots_are_node_and_physical_gpu(env: dict[str, Any]) -> None:
    slots = env["rc"].slots()
    assert len(slots) == 4 and len({(s.node, s.gpu) for s in slots}) == 4
    assert len({s.node for s in slots}) == 2 and {s.gpu for s in slots} == {0, 1}
    assert all(s.host == "127.0.0.1" for s in slots)


async def test_read_is_done_on_the_node(env: dict[str, Any]) -> None:
    rc, slots = env["rc"], env["rc"].slots()
    readings = await read_gpus(rc, slots, 10.0, set())
    assert {s: r.free_mib for s, r in readings.items()} == {s: FREE[s.gpu] for s in slots}


async def test_a_cpu_only_node_reads_nothing() -> None:
    actor = object.__new__(GpuActor)  # the actor's code, in-process, with NVML missing
    actor._probe_factory, actor._probe, actor.gpu = None, None, 0
    try:
        import pynvml
        pynvml.nvmlInit()
        pytest.skip("NVML works here")
    except Exception:
        pass
    assert await actor.read() == Reading()


def test_connect_keeps_the_supervisors_sigterm_handler(env: dict[str, Any]) -> None:
    assert env["sigterm_kept"]  # ray.init installs sys.exit: the first SIGTERM must drain


def test_missing_ray_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RayMissing, match=r"pip install -e '\.\[ray\]'"):
        connect("auto")


# -- rounds -------------------------------------------------------------------------------
async def test_gpu_rounds_are_not_starved_and_workers_are_reused(env: dict[str, Any]) -> None:
    """4 rounds on 4 GPUs with 2 CPUs in the cluster run at once, twice, on the same
    actors; each round's launcher is a child of its slot's actor (the GPU trap holds)."""
    rc: RayCluster = env["rc"]
    slots = rc.slots()
    actors = {s: rc.actor_pid(s) for s in slots}
    for wave in range(2):
        rounds = [Round(env, s, iter_s=0.25, keep_folder=True) for s in slots]
        exits: dict[Slot, RemoteExit] = {}

        async def one(r: Round) -> None:
            exits[r.slot] = await r.run()

        async with anyio.create_task_group() as tg:
            for r in rounds:
                tg.start_soon(one, r)
        assert all(e.returncode == 0 and e.result for e in exits.values())
        assert max(r.start_t for r in rounds) < min(r.end_t for r in rounds), wave
        assert {r.slot: r.parent for r in rounds} == actors
        for r in rounds:
            config = exits[r.slot].config.decode()
            assert f"cuda_visible_devices='{r.slot.gpu}'" in config
            assert "cuda_device_order='PCI_BUS_ID'" in config
    assert {s: rc.actor_pid(s) for s in rc.slots()} == actors


async def test_result_bytes_equal_the_file_and_the_folder_is_removed(
        env: dict[str, Any], tmp_path: Path) -> None:
    slot = env["rc"].slots()[0]
    kept = Round(env, slot, keep_folder=True)
    exit_ = await kept.run()
    results = env["base"] / kept.name / "results"
    assert exit_.returncode == 0 and exit_.stopped is None and exit_.lost is None
    assert exit_.result == (results / "obj.npy").read_bytes()
    assert exit_.config == (results / "config.txt").read_bytes()
    assert exit_.pid == kept.pid and exit_.node == slot.node
    removed = Round(env, slot)
    exit_ = await removed.run()
    assert exit_.result and not (env["base"] / removed.name).exists()
    folder = exit_.mirror(tmp_path, removed.name, "obj")
    assert (folder / "results" / "obj.npy").read_bytes() == exit_.result


async def test_lines_arrive_in_order_and_repeated_lines_all_arrive(
        env: dict[str, Any], tmp_path: Path) -> None:
    code = ("import sys\n"
            "for i in range(3000): print(f'line {i}')\n"
            "for _ in range(500): print('the same line')\n"
            "sys.stderr.write('\\rbar 1/3\\rbar 2/3\\rbar 3/3\\n' * 50)\n"
            "sys.stdout.write('no newline at end')\n")
    argv = [sys.executable, "-c", code]
    remote = Round(env, env["rc"].slots()[1], argv=argv)
    exit_ = await remote.run()
    assert exit_.returncode == 0 and exit_.result is None
    stdout = [line for s, line in remote.lines if s == "stdout"]
    assert stdout == [f"line {i}" for i in range(3000)] + ["the same line"] * 500 + [
        "no newline at end"]
    local: list[tuple[str, str]] = []
    await runner.run_child(argv, cwd=tmp_path, env=dict(os.environ),
                           on_line=lambda s, line: local.append((s, line)))
    for stream in ("stdout", "stderr"):  # exactly what the local backend sees
        assert [x for x in remote.lines if x[0] == stream] == [x for x in local if x[0] == stream]


async def test_stop_sigterm_then_sigkill_after_grace_and_kill_now(env: dict[str, Any]) -> None:
    slots = env["rc"].slots()
    polite = Round(env, slots[0], iter_s=0.05, name=unique("polite"))
    stubborn = Round(env, slots[1], iter_s=0.05, name=unique("stubborn"), grace_s=0.5,
                     extra={"EMULATOR_FAULTS": "*=ignore_sigterm"})
    killed = Round(env, slots[2], iter_s=0.05, name=unique("killed"), grace_s=30,
                   extra={"EMULATOR_FAULTS": "*=ignore_sigterm"})
    for r in (polite, stubborn, killed):
        r.argv = emulator(r.name, r.slot.gpu, iterations=2000)
    exits: dict[str, RemoteExit] = {}

    async def one(r: Round) -> None:
        exits[r.name] = await r.run()

    async with anyio.create_task_group() as tg:
        for r in (polite, stubborn, killed):
            tg.start_soon(one, r)
        for r in (polite, stubborn, killed):  # SIGTERM is ignored from then on
            await r.printed("Starting optimization")
        t0 = time.monotonic()
        polite.stop.set()
        stubborn.stop.set()
        killed.stop.set()
        killed.kill.set()
    assert exits[polite.name].returncode == -signal.SIGTERM
    assert exits[stubborn.name].returncode == -signal.SIGKILL
    assert stubborn.end_t - t0 >= 0.5
    assert exits[killed.name].returncode == -signal.SIGKILL and killed.end_t - t0 < 10
    assert all(e.stopped == "stop" for e in exits.values())
    for r in (polite, stubborn, killed):
        assert await gone(r.name)


async def test_timeout_and_stall_are_enforced_on_the_node(env: dict[str, Any]) -> None:
    slot = env["rc"].slots()[3]
    hang = Round(env, slot, name=unique("hang"), stall_timeout_s=0.5, grace_s=1,
                 extra={"EMULATOR_FAULTS": "*=hang"})
    hang.argv = emulator(hang.name, slot.gpu, iterations=50)
    assert (await hang.run()).stopped == "stall"
    slow = Round(env, slot, name=unique("slow"), iter_s=0.05, timeout_s=0.5, grace_s=1)
    slow.argv = emulator(slow.name, slot.gpu, iterations=2000)
    assert (await slow.run()).stopped == "timeout"


async def test_cancelling_the_caller_stops_the_remote_group(env: dict[str, Any]) -> None:
    """The child runs in its own session, out of Ray's reach: the actor kills its group,
    grandchild (a data-loader-like worker) included."""
    rc: RayCluster = env["rc"]
    slot = rc.slots()[0]
    r = Round(env, slot, iter_s=0.05, name=unique("cancel"),
              extra={"EMULATOR_FAULTS": "*=spawn_worker"})
    r.argv = emulator(r.name, slot.gpu, iterations=2000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(r.run)
        await r.printed("Starting optimization")  # the worker is there
        assert len(processes_named(r.name)) >= 3  # launcher, emulator, worker
        tg.cancel_scope.cancel()
    assert await gone(r.name, within_s=3)
    again = Round(env, slot)  # the slot and its actor go on
    assert (await again.run()).returncode == 0 and again.parent == rc.actor_pid(slot)


async def test_could_not_start(env: dict[str, Any], tmp_path: Path) -> None:
    r = Round(env, env["rc"].slots()[0])
    r.kw["keep_folder"] = True
    rc: RayCluster = env["rc"]
    exit_ = await rc.run_round(r.slot, r.argv, str(tmp_path / "missing"), {}, env["base"],
                               r.name, "obj", 1, 0, 0, lambda *_: None, lambda _: None,
                               anyio.Event(), anyio.Event(), False)
    assert exit_.returncode is None and exit_.error and exit_.error.startswith("could not start")


async def test_a_dead_worker_takes_its_round_with_it(env: dict[str, Any]) -> None:
    rc: RayCluster = env["rc"]
    slot = rc.slots()[1]
    old = rc.actor_pid(slot)
    r = Round(env, slot, iter_s=0.05, name=unique("orphan"),
              extra={"EMULATOR_FAULTS": "*=spawn_worker"})
    r.argv = emulator(r.name, slot.gpu, iterations=2000)
    async with anyio.create_task_group() as tg:
        result: list[RemoteExit] = []
        tg.start_soon(lambda: _append(result, r.run()))
        await r.started.wait()
        os.kill(old, signal.SIGKILL)  # the worker process dies (OOM killer, crash)
    assert result[0].lost and result[0].lost.startswith("worker lost:"), result[0]
    assert await gone(r.name)  # PR_SET_PDEATHSIG took the group down
    assert slot not in rc.slots()
    added, removed = await rc.refresh()
    assert [s for s, _ in removed] == [slot] and removed[0][1].startswith("worker lost:")
    assert added == [slot] and rc.actor_pid(slot) != old  # a fresh actor on the same GPU


async def _append(out: list, awaitable: Any) -> None:
    out.append(await awaitable)


async def test_a_node_lost_mid_round(env: dict[str, Any]) -> None:
    rc: RayCluster = env["rc"]
    node = env["cluster"].add_node(num_cpus=0, num_gpus=1)
    added, removed = await rc.refresh()
    assert len(added) == 1 and not removed and len(rc.slots()) == 5
    slot = added[0]
    r = Round(env, slot, iter_s=0.05, name=unique("lost"))
    r.argv = emulator(r.name, slot.gpu, iterations=2000)
    async with anyio.create_task_group() as tg:
        result: list[RemoteExit] = []
        tg.start_soon(lambda: _append(result, r.run()))
        await r.started.wait()
        env["cluster"].remove_node(node)
    assert result[0].lost and result[0].lost.startswith("node lost:"), result[0]
    assert result[0].returncode is None and result[0].node == slot.node
    assert await gone(r.name)
    added, removed = await rc.refresh(wait_s=5)
    assert not added and [s for s, _ in removed] == [slot]
    assert removed[0][1].startswith("node lost:") and len(rc.slots()) == 4


DRIVER = """
import sys, anyio
from supervisor.backends.ray.connect import connect
address, node, name, base = sys.argv[1:]
rc = connect(address)
async def main():
    while not [s for s in rc.slots() if s.node == node]:
        await rc.refresh(wait_s=0.5)
    slot = [s for s in rc.slots() if s.node == node][0]
    argv = [sys.executable, "-m", "supervisor.emulator", "--name", name, "--object_code", "obj",
            "--batch_size", "4", "--num_iterations", "5000", "--seed", "1", "--gpu",
            str(slot.gpu), "--jitter_strength", "0.1"]
    env = {"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0.05", "EMULATOR_EXPERIMENTS_BASE": base}
    await rc.run_round(slot, argv, ".", env, base, name, "obj", 5, 0, 0,
                       lambda s, line: print(line, flush=True), lambda pid: None,
                       anyio.Event(), anyio.Event(), False)
anyio.run(main)
"""


async def test_a_killed_supervisor_takes_its_remote_rounds_with_it(env: dict[str, Any]) -> None:
    """SIGKILL the head: Ray kills the actors it owned, PR_SET_PDEATHSIG their rounds."""
    cluster = env["cluster"]
    node = cluster.add_node(num_cpus=0, num_gpus=1)
    name = unique("headless")
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, cluster.address, node.node_id, name, str(env["base"])],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        with anyio.fail_after(60):
            while "Starting optimization" not in await anyio.to_thread.run_sync(
                    driver.stdout.readline):
                assert driver.poll() is None
        assert len(processes_named(name)) >= 2
        driver.kill()
        driver.wait()
        assert await gone(name, within_s=10)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        cluster.remove_node(node)


def test_what_the_cluster_reports_goes_to_stderr_not_among_the_json_events(
        env: dict[str, Any], capfd: pytest.CaptureFixture[str]) -> None:
    """A tester saw "(raylet) A worker died ..." in the supervisor's JSON log on stdout."""
    from ray._private import worker
    worker.print_to_stdstream({"lines": ["A worker died (test)"], "pid": "raylet",
                               "is_err": False}, ignore_prefix=False)
    out, err = capfd.readouterr()
    assert "A worker died (test)" in err and "A worker died" not in out
