"""Crash-proofing: kill -9 anywhere, orphans, garbage children, broken state, full disks,
GPU faults."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from conftest import Layout, cli_env, full_disk, json_lines, run_cli, run_in_process
from faultinjection import kill_anywhere
from supervisor.storage import paths
from supervisor.gpus.fake import FakeProbe


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def test_kill_anywhere_ten_kills(layout: Layout) -> None:
    report = kill_anywhere(layout, kills=10, seed=2026, env=cli_env())
    assert sum(report.kills.values()) >= 10
    assert report.grasps_checked >= 42


def test_kill_anywhere_with_near_duplicate_removal(layout: Layout) -> None:
    from faultinjection import DEDUP_SETTINGS

    report = kill_anywhere(layout, kills=6, seed=11, env=cli_env(), settings=DEDUP_SETTINGS)
    assert sum(report.kills.values()) >= 6


@pytest.mark.slow
def test_kill_anywhere_fifty_kills(layout: Layout) -> None:
    report = kill_anywhere(layout, kills=50, seed=7, env=cli_env())
    assert sum(report.kills.values()) >= 50


def _state_with_running_round(name: str, pid: int, proc_start: int | None):
    from supervisor.core.records import ObjectRecord, RoundRecord, RoundStatus
    from supervisor.core.state import Policy, State

    state = State(Policy("t"), {}, {}, 0.0)
    state.add_object(ObjectRecord("obj_a", 0, 4))
    state.add_round("obj_a", RoundRecord(0, name, 0, status=RoundStatus.RUNNING, attempts=1,
                                         pid=pid, proc_start=proc_start))
    state.set_order(["obj_a"])
    return state


def test_orphan_group_of_a_dead_supervisor_is_killed_grandchildren_included() -> None:
    from supervisor.core import events as ev
    from supervisor.run.resume import kill_orphans
    from supervisor.core.state import KillOrphans
    from supervisor.run.dispatcher import proc_start
    from supervisor.core.transitions import apply

    name = "t__obj_a__r0"
    # A round's group: a leader that spawned a worker (like a data loader) in its group.
    code = ("import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(120)']); print(w.pid, flush=True); time.sleep(120)")
    leader = subprocess.Popen([sys.executable, "-c", code, name], start_new_session=True,
                              stdout=subprocess.PIPE)
    assert leader.stdout is not None
    worker = int(leader.stdout.readline())
    try:
        state = _state_with_running_round(name, leader.pid, proc_start(leader.pid))
        effects = apply(state, ev.SupervisorStarted(1, "h", (), 0.0, gpus=(0,)))
        kills = [e for e in effects if isinstance(e, KillOrphans)]
        assert kills and kill_orphans(kills[0].rounds) == [(name, leader.pid)]
        assert leader.wait(timeout=10) == -signal.SIGKILL
        assert not Path(f"/proc/{worker}").exists() or \
            Path(f"/proc/{worker}/stat").read_text().split(") ")[1][0] == "Z"
    finally:
        leader.kill()
        try:
            os.kill(worker, signal.SIGKILL)
        except ProcessLookupError:
            pass
    rnd = state.round_of("obj_a", 0)
    assert rnd.status == "interrupted" and rnd.attempts == 0 and rnd.pid is None


def test_unrelated_process_with_a_recorded_pid_is_left_alone() -> None:
    from supervisor.run.resume import kill_orphans
    from supervisor.run.dispatcher import proc_start

    mine = proc_start(os.getpid())
    assert mine is not None
    # Our pid, recorded for a round that started at another time: a reused pid.
    assert kill_orphans((("t__o__r0", os.getpid(), mine + 1),), wait_s=0.1) == []
    assert kill_orphans((("t__o__r0", os.getpgrp(), None),), wait_s=0.1) == []


@pytest.mark.parametrize("of_round", [False, True])
def test_a_leaderless_group_is_killed_only_if_it_carries_the_round(of_round: bool) -> None:
    """Found while testing: a recorded round pid later led an unrelated group that lost
    its leader (a shell's background job), and resume killed that group, pytest and all."""
    from supervisor.backends.job import ROUND_ENV
    from supervisor.run.resume import kill_orphans

    name = "t__obj_a__r0"
    env = {**os.environ, **({ROUND_ENV: name} if of_round else {})}
    code = ("import subprocess, sys; w = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)'], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL); print(w.pid, flush=True)")
    leader = subprocess.run([sys.executable, "-c", code], start_new_session=True, env=env,
                            capture_output=True, text=True, timeout=30)
    member = int(leader.stdout)  # its leader has exited: a group without a leader
    try:
        pgid = int(Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()[2])
        killed = kill_orphans(((name, pgid, None),), wait_s=5)
        assert killed == ([(name, pgid)] if of_round else [])
        if not of_round:
            assert Path(f"/proc/{member}").exists()
    finally:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_stale_lock_from_a_dead_process_does_not_block(layout: Layout) -> None:
    (layout.experiments / "t").mkdir(parents=True)
    (layout.experiments / "t" / "supervisor.lock").write_text("999999\n")
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0


GARBAGE = ["truncated", "wrong_dtype", "wrong_type", "missing_key", "extra_key",
           "wrong_length", "nan", "inf", "sigkill", "exit:42", "exit:255", "crash"]


@pytest.mark.parametrize("fault", GARBAGE)
def test_child_faults_are_recorded_precisely_and_never_merged(layout: Layout,
                                                               fault: str) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4,
                           retry={"max_attempts": 1}, gpus=[0],
                           env={"EMULATOR_FAULTS": f"t__obj_a__r0={fault}"})
    assert run_in_process(config) == 0
    obj = layout.manifest()["objects"]["obj_a"]
    r0 = obj["rounds"]["0"]
    assert r0["status"] == "failed" and len(r0["failures"]) == 1
    reason = r0["failures"][0]["reason"]
    expected = {
        "truncated": "invalid result: unreadable", "wrong_dtype": "invalid result: result "
        "file holds a float32", "wrong_type": "invalid result: result file holds a dict",
        "missing_key": "invalid result: grasp 3 lacks key(s) E_fc",
        "extra_key": "invalid result: grasp 3 has keys that differ",
        "wrong_length": "invalid result: wrong batch length: 3 grasps, expected 4",
        "nan": "invalid result: non-finite E_pen", "inf": "invalid result: non-finite qpos",
        "sigkill": "killed by signal 9", "exit:42": "exit code 42", "exit:255": "exit code 255",
        "crash": "exit code 1",
    }[fault]
    assert reason.startswith(expected), reason
    data = layout.final("obj_a")
    assert set(data["round_id"].tolist()) == {1} and len(data["energy"]) == 4


def test_corrupt_manifest_is_refused_then_recovered(layout: Layout) -> None:
    settings = dict(target_count_per_object=8, round_batch_size=4, keep_intermediate=True)
    path = layout.write_config(**settings)
    assert run_cli(str(path)).returncode == 0
    manifest = layout.experiments / "t" / "manifest.json"
    manifest.write_text(manifest.read_text()[:300])
    refused = run_cli(str(path))
    assert refused.returncode == 2
    assert f"python -m supervisor recover {path}" in refused.stderr
    assert len(manifest.read_text()) == 300  # never overwritten silently
    # Raise the target: the rebuilt manifest must let the run go on exactly.
    recovered = run_cli("recover", str(path))
    assert recovered.returncode == 0, recovered.stderr
    assert list(manifest.parent.glob("manifest.json.broken-*"))
    resumed = run_cli(str(path), "--target_count_per_object", "11")
    assert resumed.returncode == 0, resumed.stderr
    reference = layout.config(exp_name="ref", **{**settings, "target_count_per_object": 11})
    assert run_in_process(reference) == 0
    for code in ("obj_a", "obj_b", "obj_c"):
        a, b = layout.final(code), layout.final(code, "ref")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_corrupt_final_npz_is_refused_then_recovered(layout: Layout) -> None:
    path = layout.write_config(target_count_per_object=8, round_batch_size=4,
                               merge_stride=1, cleanup={"mode": "light"})
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", str(path)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # stop after obj_a's first merge, before it is done
        if json.loads(line)["event"] == "round_merged":
            proc.kill()
            break
    proc.wait(timeout=30)
    final = paths.final(layout.experiments / "t", "obj_a")
    final.write_bytes(b"PK\x03\x04 hand-edited nonsense")
    refused = run_cli(str(path))
    assert refused.returncode == 2 and "recover" in refused.stderr and "final.npz" in refused.stderr
    assert run_cli("recover", str(path)).returncode == 0
    assert run_cli(str(path)).returncode == 0
    reference = layout.config(exp_name="ref", target_count_per_object=8, round_batch_size=4)
    assert run_in_process(reference) == 0
    np.testing.assert_array_equal(layout.final("obj_a")["qpos_right"],
                                  layout.final("obj_a", "ref")["qpos_right"])


def test_corrupt_final_npz_of_a_done_object_is_refused_then_recovered(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=8,
                               cleanup={"mode": "light"})
    assert run_cli(str(path)).returncode == 0
    before = layout.final("obj_a")
    paths.final(layout.experiments / "t", "obj_a").write_bytes(b"PK\x03\x04 junk")
    refused = run_cli(str(path))
    assert refused.returncode == 2 and "recover" in refused.stderr, refused.stderr
    assert run_cli("recover", str(path)).returncode == 0
    assert run_cli(str(path)).returncode == 0
    for key, value in before.items():
        np.testing.assert_array_equal(layout.final("obj_a")[key], value)


def test_rebuild_without_any_manifest_from_folders_and_datasets(layout: Layout) -> None:
    path = layout.write_config(target_count_per_object=8, keep_intermediate=True,
                               object_code_list=["obj_a", "obj_b"])
    assert run_cli(str(path)).returncode == 0
    (layout.experiments / "t" / "manifest.json").unlink()
    report = run_cli("recover", str(path))
    assert report.returncode == 0 and "obj_b: index 1" in report.stdout
    again = run_cli(str(path))
    assert again.returncode == 0
    assert "round_started" not in {e["event"] for e in json_lines(again.stdout)}


def test_full_disk_while_writing_keeps_files_and_the_run_resumable(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=12, gpus=[0])
    with full_disk(lambda n, rows: n == 2) as calls, capture_logs() as logs:
        assert run_in_process(config) == 1
    failed = events(logs, "write_failed")
    assert failed and failed[0]["errno"] == errno.ENOSPC
    assert len(layout.final("obj_a")["energy"]) >= calls[0]  # the earlier file is intact
    assert run_in_process(config) == 0
    assert len(layout.final("obj_a")["energy"]) == 12


def test_low_disk_space_waits_instead_of_starting_rounds(layout: Layout, monkeypatch) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4,
                           disk={"min_free_gib": 1.0})
    real, polls = shutil.disk_usage, []

    def usage(path):
        polls.append(path)
        total, used, free = real(path)
        return type(real(path))(total, used, 0 if len(polls) <= 3 else free)

    monkeypatch.setattr(shutil, "disk_usage", usage)
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    names = [e["event"] for e in logs]
    assert names.index("disk_wait") < names.index("round_started")
    assert "disk.min_free_gib 1" in events(logs, "disk_wait")[0]["reason"]


def test_gpu_falling_off_the_bus_mid_run(layout: Layout) -> None:
    fake = FakeProbe({0: 80_000, 1: 80_000})
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=8, gpus=[0, 1],
                           gpu={"probe": "auto", "max_rounds_per_gpu": 1},
                           env={"EMULATOR_FAULTS": "t__obj_a__r1=exit"})
    import supervisor.run.dispatcher as sup_mod

    original = sup_mod.Dispatcher._start

    def start(self, pick, gpu, *rest):
        original(self, pick, gpu, *rest)
        if gpu == 1:
            fake.failing.add(1)  # the card is gone while its round runs

    sup_mod.Dispatcher._start = start
    try:
        with capture_logs() as logs:
            assert run_in_process(config, fake) == 0
    finally:
        sup_mod.Dispatcher._start = original
    assert events(logs, "gpu_lost")[0]["gpu"] == 1
    r1 = layout.manifest()["objects"]["obj_a"]["rounds"]["1"]
    assert r1["failures"][0]["gpu"] == 1 and r1["gpu"] == 0 and r1["status"] == "merged"


def test_templates_never_reach_a_shell(layout: Layout) -> None:
    marker = layout.root / "pwned"
    command = ["{python}", "-c", "import sys; print(sys.argv[1:])", "{name}", "{seed}",
               f"$(touch {marker}); touch {marker}", f"`touch {marker}`"]
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4,
                           max_rounds=1, retry={"max_attempts": 1},
                           main={"command": command})
    assert run_in_process(config) == 1  # no result file: the round fails
    assert not marker.exists()
    log = (layout.experiments / "t" / "logs" / "rounds" / "t__obj_a__r0.log").read_text()
    assert f"$(touch {marker}); touch {marker}" in log
