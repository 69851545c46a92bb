"""The supervisor on a Ray cluster ([backend] kind = "ray"), end to end, on a loopback
cluster of logical GPUs with emulator children: the same final.npz as the local backend,
a node lost mid-round, drain and stop, a killed head, a failing node.

The module's cluster: a head and one node with 2 GPUs each; tests add (and remove) more.
Supervisors run as `python -m supervisor` children (their own Ray drivers) except the
first test, which runs one in this process with a fake NVML on the nodes.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import anyio
import numpy as np
import pytest

from conftest import EMULATOR_COMMAND, Layout, cli_env, live_emulators, run_in_process
from raytest import loopback_cluster, needs_ray

pytestmark = [needs_ray]
CODES = ["obj_a", "obj_b", "obj_c"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with loopback_cluster({"num_cpus": 1, "num_gpus": 2},
                          {"num_cpus": 1, "num_gpus": 2}) as (c, _):
        yield c


def ray_data(cluster: Any, **overrides: Any) -> dict[str, Any]:
    return {"gpus": "all", "backend": {"kind": "ray", "address": cluster.address},
            "gpu": {"probe": "auto", "poll_interval_s": 0.5}, **overrides}


def slow(iter_s: float) -> dict[str, Any]:
    return {"env": {"EMULATOR_ITER_S": str(iter_s)}}


def reference(root: Path, **overrides: Any) -> Layout:
    """The same experiment on the local backend (3 fake GPUs)."""
    local = Layout(root)
    assert run_in_process(local.config(gpus=[0, 1, 2], **overrides)) == 0
    return local


def assert_same_finals(a: Layout, b: Layout, quota: int = 10) -> None:
    for code in CODES:
        x, y = a.final(code), b.final(code)
        assert sorted(x) == sorted(y)
        for key in x:
            assert np.array_equal(x[key], y[key]), (code, key)
        assert len(x["energy"]) == quota  # exactly the quota


class Head:
    """``python -m supervisor CONFIG --log-format json`` with its events collected."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", str(config), "--log-format", "json"],
            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL, start_new_session=True)
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr),
                         daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.changed:
                self.events.append(event)
                self.changed.notify_all()

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.changed:
            return [e for e in self.events if e.get("event") == name]

    def wait_for(self, name: str, count: int = 1, where: Any = None,
                 timeout: float = 90) -> list[dict[str, Any]]:
        def found() -> list[dict[str, Any]]:
            return [e for e in self.events if e.get("event") == name
                    and (where is None or where(e))]
        with self.changed:
            ok = self.changed.wait_for(
                lambda: len(found()) >= count or self.proc.poll() is not None, timeout)
            hits = found()
        assert len(hits) >= count, (name, ok, self.proc.poll(), "".join(self.stderr)[-2000:],
                                    [e.get("event") for e in self.events][-30:])
        return hits

    def finish(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def node_of(node: Any) -> str:
    """How the supervisor names a cluster node: HOST/first 8 of its id."""
    return f"127.0.0.1/{node.node_id[:8]}"


def test_a_run_on_the_cluster_equals_the_local_run(cluster: Any, tmp_path: Path) -> None:
    from supervisor.run.start import run_supervisor
    from supervisor.gpus.fake import FakeProbe
    from supervisor.backends.ray.backend import RayBackend
    from supervisor.backends.ray.connect import connect

    layout = Layout(tmp_path / "ray")
    config = layout.config(**ray_data(cluster))
    backend = RayBackend(connect(cluster.address,
                                 probe_factory=functools.partial(FakeProbe, {0: 80_000,
                                                                             1: 80_000})))
    anyio.run(backend.refresh)
    try:
        keys, nodes = backend.gpu_indices(), set(backend.nodes())
        assert len(keys) == 4 and len(nodes) == 2
        assert run_supervisor(config, backend=backend) == 0
    finally:
        backend.close()
    assert_same_finals(layout, reference(tmp_path / "local"))
    m = layout.manifest()
    for obj in m["objects"].values():
        for r in obj["rounds"].values():  # every round says where it ran
            assert r["node"] in nodes and r["gpu"].startswith(r["node"] + "/gpu")
    assert set(m["gpus"]) == set(keys)
    logs = {p.name for p in (layout.experiments / "t" / "logs").glob("gpu_*.log")}
    assert logs and all(name.startswith("gpu_127.0.0.1_") for name in logs)
    # Nothing of the node's round folders is needed any more: the head holds the results.
    assert not list((layout.root / "data" / "experiments").glob("t__*"))


def test_node_beside_gpu_and_dry_run_lists_the_nodes(cluster: Any, tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    config = layout.write_config(**ray_data(cluster))
    dry = subprocess.run([sys.executable, "-m", "supervisor", str(config), "--dry-run"],
                         env=cli_env(), capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "2 node(s), 4 GPU(s)" in dry.stdout and dry.stdout.count("  node 127.0.0.1/") == 2
    assert not (layout.experiments / "t").exists()
    head = Head(config)
    assert head.finish() == 0, "".join(head.stderr)[-2000:]
    with_gpu = [e for e in head.events if e.get("gpu") is not None]
    assert with_gpu and all(isinstance(e["gpu"], int) and e.get("node", "").startswith(
        "127.0.0.1/") for e in with_gpu), [e for e in with_gpu if "node" not in e][:3]
    status = subprocess.run([sys.executable, "-m", "supervisor", "status", str(config)],
                            env=cli_env(), capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "objects 3/3 done" in status.stdout, status.stdout


def test_a_node_that_joins_is_used_and_one_lost_mid_round_reruns_elsewhere(
        cluster: Any, tmp_path: Path) -> None:
    more = {"num_iterations": 40, "target_count_per_object": 24}  # 18 rounds of ~2 s
    layout = Layout(tmp_path / "ray")
    head = Head(layout.write_config(**ray_data(cluster), **slow(0.05), **more))
    node = None
    try:
        head.wait_for("round_started")
        node = cluster.add_node(num_cpus=1, num_gpus=2)  # joins while the run goes on
        gone = node_of(node)
        head.wait_for("gpu_added", count=2, where=lambda e: e.get("node") == gone)
        head.wait_for("round_started", where=lambda e: e.get("node") == gone)
        cluster.remove_node(node)
        assert head.finish() == 0, "".join(head.stderr)[-2000:]
    finally:
        if node is not None and node in cluster.worker_nodes:
            cluster.remove_node(node)
    lost = head.named("gpu_lost")
    assert {e["node"] for e in lost} == {gone} and len(lost) == 2
    assert all("node lost" in e["reason"] for e in lost)
    interrupted = head.named("round_interrupted")
    assert interrupted and all(e["node"] == gone for e in interrupted)
    m = layout.manifest()
    for e in interrupted:  # rerun elsewhere with the same name and seed, merged once
        rnd = m["objects"][e["object_code"]]["rounds"][e["round"].rsplit("__r", 1)[1]]
        assert rnd["node"] != gone and rnd["status"] in ("merged", "discarded")
        assert any("node lost" in f["reason"] for f in rnd["failures"])
    assert_same_finals(layout, reference(tmp_path / "local", **more), quota=24)


def test_drain_then_stop_on_every_node_then_resume(cluster: Any, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "ray")
    config = layout.write_config(**ray_data(cluster), **slow(0.05), num_iterations=80)
    # First SIGINT: nothing new starts, the running rounds finish and are merged.
    head = Head(config)
    head.wait_for("round_started", count=2)
    # Meanwhile a second supervisor is refused at once, before joining the cluster, and
    # --dry-run says who runs it (the running one's workers hold every GPU).
    for args, code, said in (([], 2, f"running supervisor (pid {head.proc.pid})"),
                             (["--dry-run"], 0, f"a supervisor (pid {head.proc.pid})")):
        t0 = time.monotonic()
        other = subprocess.run([sys.executable, "-m", "supervisor", str(config), *args],
                               env=cli_env(), capture_output=True, text=True, timeout=60)
        assert other.returncode == code and said in other.stdout + other.stderr, other
        assert time.monotonic() - t0 < 15
    os.kill(head.proc.pid, signal.SIGINT)
    head.wait_for("drain_started")
    assert head.finish() == 130
    drained = head.events.index(head.named("drain_started")[0])
    assert not [e for e in head.events[drained:] if e.get("event") == "round_started"]
    assert [e for e in head.events[drained:] if e.get("event") == "round_merged"]
    # Second SIGINT: the rounds are stopped on their nodes; no emulator is left.
    head = Head(config)
    head.wait_for("round_started", count=2)
    os.kill(head.proc.pid, signal.SIGINT)
    head.wait_for("drain_started")
    os.kill(head.proc.pid, signal.SIGINT)
    assert head.finish() == 130
    assert head.named("stop_children")
    deadline = time.monotonic() + 20
    while live_emulators("t") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_emulators("t")
    # Resume: exactly the quota, the same arrays as an uninterrupted local run.
    head = Head(config)
    assert head.finish() == 0, "".join(head.stderr)[-2000:]
    assert_same_finals(layout, reference(tmp_path / "local", num_iterations=80))


def test_kill_9_of_the_head_leaves_nothing_running_and_resumes(cluster: Any,
                                                               tmp_path: Path) -> None:
    layout = Layout(tmp_path / "ray")
    # One round's first attempt hangs, silent: no broken pipe ends it for us. Ray SIGKILLs
    # the launchers with their workers; the launchers' watchdogs kill the rest.
    env = {"EMULATOR_ITER_S": "0.05", "EMULATOR_FAULTS": "t__obj_a__r0=hang,ok*"}
    config = layout.write_config(**ray_data(cluster), env=env, num_iterations=40)
    head = Head(config)
    head.wait_for("round_started", count=3)
    deadline = time.monotonic() + 30
    while len(live_emulators("t")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # obj_a's r0 hangs now
    assert live_emulators("t")
    head.proc.kill()
    head.proc.wait()
    deadline = time.monotonic() + 30  # Ray ends the dead driver's workers; rounds die too
    while live_emulators("t") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_emulators("t")
    # Resume without the fault ([main] env is not part of the identity): the emulator may
    # not have counted the killed attempt yet, and its next attempt must not hang.
    config = layout.write_config(**ray_data(cluster), **slow(0.05), num_iterations=40)
    head = Head(config)
    assert head.finish() == 0, "".join(head.stderr)[-2000:]
    assert not head.named("orphan_stopped")  # a node's pid is never killed on the head
    assert_same_finals(layout, reference(tmp_path / "local", num_iterations=40))


BROKEN = ["sh", "-c", 'if [ -n "$SUPERVISOR_TEST_BROKEN_NODE" ]; then echo "python: can\'t '
          'open file \'main.py\': [Errno 2] No such file or directory" >&2; exit 2; fi; '
          'exec "$0" "$@"']


def test_a_failing_node_is_quarantined_and_the_others_go_on(cluster: Any,
                                                            tmp_path: Path) -> None:
    node = cluster.add_node(num_cpus=1, num_gpus=2,
                            env_vars={"SUPERVISOR_TEST_BROKEN_NODE": "1"})
    broken = node_of(node)
    try:
        layout = Layout(tmp_path / "ray")
        data = ray_data(cluster, retry={"max_attempts": 3}, **slow(0.02))
        data["gpu"]["quarantine_after"] = 2
        head = Head(layout.write_config(main={"command": BROKEN + EMULATOR_COMMAND,
                                              "cwd": "BimanGrasp-Optimization"}, **data))
        assert head.finish() == 0, "".join(head.stderr)[-2000:]
    finally:
        cluster.remove_node(node)
    m = layout.manifest()
    bad = {k: g for k, g in m["gpus"].items() if g["node"] == broken}
    assert len(bad) == 2 and all(g["status"] == "quarantined" for g in bad.values()), bad
    assert all("exit code 2" in " ".join(g["reasons"]) for g in bad.values())
    assert all(g["status"] == "healthy" for k, g in m["gpus"].items() if k not in bad)
    quarantined = head.named("gpu_quarantined")
    assert {e["node"] for e in quarantined} == {broken}
    for code in CODES:
        assert len(layout.final(code)["energy"]) == 10
