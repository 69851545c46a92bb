"""GPU health and drain, end to end with emulator children and the fake probe."""

from __future__ import annotations

import signal
import time

import anyio
import pytest
from structlog.testing import capture_logs

from conftest import EMULATOR_COMMAND, Layout, run_in_process
from supervisor.gpus.fake import FakeProbe

# Exits 1 on GPU 1 (a card with Xid errors), runs the emulator elsewhere.
BAD_GPU_1 = [
    "{python}", "-c",
    "import os, sys; gpu = sys.argv[1]; sys.exit(1) if gpu == '1' else os.execv("
    "sys.executable, [sys.executable, '-m', 'supervisor.emulator'] + sys.argv[2:])",
    "{gpu}", *EMULATOR_COMMAND[3:],
]


def names(logs: list[dict], event: str) -> list[dict]:
    return [e for e in logs if e["event"] == event]


def test_one_sick_gpu_costs_only_itself(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a", "obj_b", "obj_c", "obj_d"],
                           target_count_per_object=8, gpus=[0, 1, 2],
                           main={"command": BAD_GPU_1}, gpu={"quarantine_after": 3})
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    quarantined = names(logs, "gpu_quarantined")
    assert [e["gpu"] for e in quarantined] == [1]
    on_bad = [e for e in names(logs, "round_started") if e["gpu"] == 1]
    assert len(on_bad) < 3 + 3  # quarantine_after + max_attempts
    m = layout.manifest()
    assert all(o["status"] == "done" for o in m["objects"].values())
    assert m["gpus"]["1"]["status"] == "quarantined"
    for code in ("obj_a", "obj_b", "obj_c", "obj_d"):
        assert len(layout.final(code)["energy"]) == 8


def test_every_gpu_failing_every_object_stops_the_run_early(layout: Layout) -> None:
    command = ["{python}", "-c", "import sys; sys.exit(1)", "{name}", "{seed}"]
    config = layout.config(object_code_list=["obj_a", "obj_b", "obj_c"],
                           target_count_per_object=8, gpus=[0, 1],
                           main={"command": command}, max_rounds=50)
    with capture_logs() as logs:
        assert run_in_process(config) == 1
    assert len(names(logs, "run_stopped")) == 1
    assert len(names(logs, "round_started")) < 12  # not 3 objects x max_attempts x ...


@pytest.mark.anyio
async def test_signal_during_a_hung_nvml_read_drains_at_once(layout: Layout) -> None:
    from supervisor.run.start import open_supervisor

    probe = FakeProbe({0: 80_000})
    probe.hanging.add(0)
    config = layout.config(object_code_list=["obj_a"], gpus=[0],
                           gpu={"probe": "auto", "nvml_timeout_s": 60})
    try:
        with capture_logs() as logs, anyio.fail_after(20):
            with open_supervisor(config, probe, handle_signals=False) as sup:
                async with anyio.create_task_group() as tg:
                    result = {}

                    async def run() -> None:
                        result["code"] = await sup.run()

                    tg.start_soon(run)
                    while probe.polls == 0:  # the dispatcher is stuck in NVML now
                        await anyio.sleep(0.01)
                    began = time.monotonic()
                    sup.on_signal(signal.SIGINT)
        assert time.monotonic() - began < 5 and result["code"] == 130
        events = [e["event"] for e in logs]
        assert "drain_started" in events and "round_started" not in events
    finally:
        probe.release_hang()


def test_memory_is_counted_once_so_an_80gb_card_takes_3_rounds_of_20gb(layout: Layout) -> None:
    """NVML shows each round's process: its memory is not subtracted again."""
    import os

    from supervisor.gpus.pool import GpuPool

    probe = FakeProbe({0: 80_000})
    original, release = GpuPool.started, GpuPool.release

    def started(self, gpu: int, name: str, pgid: int) -> None:  # NVML sees the round
        original(self, gpu, name, pgid)
        probe.free[gpu] -= 20_000
        probe.processes[gpu][pgid] = 20_000

    def released(self, gpu: int, name: str) -> None:
        pgid = self.rounds[gpu].get(name)
        if probe.processes[gpu].pop(pgid, None):
            probe.free[gpu] += 20_000
        release(self, gpu, name)

    GpuPool.started = started  # type: ignore[method-assign]
    GpuPool.release = released  # type: ignore[method-assign]
    try:
        config = layout.config(
            object_code_list=["obj_a"], target_count_per_object=40, gpus=[0],
            env={"EMULATOR_ITER_S": "0.05"}, num_iterations=20,
            gpu={"probe": "auto", "max_rounds_per_gpu": 8, "min_free_mib": 25_000,
                 "round_memory_mib": 20_000, "poll_interval_s": 0.02})
        with capture_logs() as logs:
            assert run_in_process(config, probe) == 0
    finally:
        GpuPool.started = original  # type: ignore[method-assign]
        GpuPool.release = release  # type: ignore[method-assign]
    # Rounds in flight at once: 3 (80 - 3 x 20 = 20 GB < 25 GB stops the fourth).
    in_flight = peak = 0
    for e in logs:
        if e["event"] == "round_started":
            in_flight += 1
            peak = max(peak, in_flight)
        elif e["event"] in ("round_finished", "round_failed", "round_interrupted"):
            in_flight -= 1
    assert peak == 3, peak
    assert layout.manifest()["gpus"]["0"]["footprint_mib"] == 20_000  # what a round takes
    del os


def test_drain_deadline_stops_rounds_still_running(layout: Layout) -> None:
    """After the first signal, rounds running past drain_deadline_s are stopped."""
    from supervisor.run.start import open_supervisor

    config = layout.config(object_code_list=["obj_a"], gpus=[0], target_count_per_object=4,
                           env={"EMULATOR_ITER_S": "1"}, num_iterations=60,
                           timeouts={"drain_deadline_s": 0.5, "grace_s": 2.0})

    async def main() -> int:
        with anyio.fail_after(30), open_supervisor(config, FakeProbe({0: 80_000}),
                                                   handle_signals=False) as sup:
            async with anyio.create_task_group() as tg:
                result = {}

                async def run() -> None:
                    result["code"] = await sup.run()

                tg.start_soon(run)
                while not sup.watch:  # a round runs
                    await anyio.sleep(0.01)
                sup.on_signal(signal.SIGINT)
            return result["code"]

    with capture_logs() as logs:
        began = time.monotonic()
        assert anyio.run(main) == 130
    assert time.monotonic() - began < 20  # not the round's 60 s
    assert [e["reason"] for e in names(logs, "stop_children")] == [
        "timeouts.drain_deadline_s = 0.5 passed"]
    assert layout.manifest()["objects"]["obj_a"]["rounds"]["0"]["status"] == "interrupted"


def test_a_gpu_that_fails_fast_before_any_success_waits_then_is_quarantined(
        layout: Layout) -> None:
    """Found by a tester: a card failing in 0.1 s took a new round for each object while
    good rounds took seconds, and the run stopped as if every GPU were broken."""
    config = layout.config(object_code_list=["obj_a", "obj_b", "obj_c", "obj_d"],
                           target_count_per_object=8, gpus=[0, 1, 2],
                           main={"command": BAD_GPU_1}, num_iterations=30,
                           env={"EMULATOR_ITER_S": "0.03"})
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    assert [e["gpu"] for e in names(logs, "gpu_quarantined")] == [1]
    assert not names(logs, "run_stopped")
    on_bad = [e for e in names(logs, "round_started") if e["gpu"] == 1]
    assert len(on_bad) < 3 + 3


def test_suspect_gpu_waits_until_another_gpu_tells() -> None:
    from supervisor.core import events as ev, plan
    from supervisor.core.records import GpuStatus
    from supervisor.core.state import Policy, State
    from supervisor.core.transitions import apply

    state = State(Policy("e", batch_size=4), {}, {}, 0.0)
    apply(state, ev.ObjectsRegistered(("a", "b", "c"), 100))
    apply(state, ev.SupervisorStarted(1, "h", (), 0.0, gpus=(0, 1)))
    apply(state, ev.RoundStarted("c", 0, 0, 0.0))  # a long round on GPU 0
    for code in ("a", "b", "a"):
        rid = state.next_round_id(code)
        apply(state, ev.RoundStarted(code, rid, 1, 0.0))
        apply(state, ev.RoundFailed(code, rid, 1, "exit code 1", 0.0, 0.1, 1))
    assert plan.pick(state, 1) is None and plan.pick(state, 0) is not None
    apply(state, ev.RoundProduced("c", 0, 4, 4, 1.0, 1.0))
    assert state.gpus[1].status == GpuStatus.QUARANTINED


def test_a_cluster_that_lost_every_gpu_waits_for_a_node_to_join(layout: Layout) -> None:
    """On a cluster (a dynamic backend) losing every node is not the end of the run: a
    restarted server comes back. Here the only GPU leaves, then joins again."""
    from supervisor.backends.local import LocalBackend
    from supervisor.run.start import open_supervisor

    class Churning(LocalBackend):
        dynamic = True

        def __init__(self, probe: FakeProbe) -> None:
            super().__init__(probe)
            self.calls = 0

        async def refresh(self):  # first the node leaves, then it is back
            self.calls += 1
            if self.calls == 1:
                return [], [(0, "node lost: 10.0.0.2 (test): it left the cluster")]
            return ([0], []) if self.calls == 3 else ([], [])

    config = layout.config(gpus=[0], object_code_list=["obj_a"])
    probe = FakeProbe({0: 80_000})

    async def main() -> int:
        with anyio.fail_after(60), open_supervisor(config, probe, handle_signals=False,
                                                   backend=Churning(probe)) as sup:
            return await sup.run()

    with capture_logs() as logs:
        assert anyio.run(main) == 0
    events = [e["event"] for e in logs]
    assert events.index("gpu_lost") < events.index("gpu_wait") < events.index("gpu_added")
    waits = [e for e in logs if e["event"] == "gpu_wait"]
    assert "waiting for a node" in waits[0]["reason"]
    assert len(layout.final("obj_a")["energy"]) == 10


def test_a_run_that_can_never_go_on_says_so_and_stops(layout: Layout, monkeypatch) -> None:
    """Nothing runs and the plan has a round for no GPU, though objects are unfinished:
    nothing would ever wake the dispatcher. It stops with one line instead of a silent
    hang (here the plan is made to offer nothing; in a run that is a bug)."""
    from supervisor.core import plan

    monkeypatch.setattr(plan, "pick", lambda *args, **kwargs: None)
    with capture_logs() as logs:
        assert run_in_process(layout.config(), timeout_s=30) == 1
    stopped = names(logs, "run_stopped")
    assert len(stopped) == 1 and stopped[0]["reason"].startswith(
        "no round can start on any GPU and none is running, with 3 object(s) unfinished")
