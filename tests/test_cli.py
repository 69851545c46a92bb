"""``python -m supervisor`` as users run it: JSON lines, signals, kill -9, resume."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest

from supervisor.storage import paths

from conftest import ROOT, Layout, cli_env, json_lines, live_emulators, run_cli, run_in_process

SLOW_ENV = {"EMULATOR_ITER_S": "0.02"}


def start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "supervisor", str(config), *args], env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )


def read_until(stream: IO[str], event: str, seen: list[dict[str, Any]], count: int = 1) -> None:
    """Read JSON lines until ``count`` events named ``event`` have been seen."""
    n = 0
    for line in stream:
        seen.append(json.loads(line))
        if seen[-1]["event"] == event:
            n += 1
            if n == count:
                return
    raise AssertionError(f"stream ended before {count} {event} events")


def check_complete(layout: Layout, exp: str, codes: tuple[str, ...], target: int) -> None:
    m = layout.manifest(exp)
    for code in codes:
        assert m["objects"][code]["done"]
        data = layout.final(code, exp)
        assert len(data["energy"]) == target
        pairs = set(zip(data["round_id"].tolist(), data["item_index"].tolist()))
        assert len(pairs) == target  # no duplicate (round_id, item_index)


def test_demo_config_runs_and_every_stdout_line_is_json(tmp_path: Path) -> None:
    shutil.copy(ROOT / "config.example.toml", tmp_path)
    shutil.copytree(ROOT / "demo", tmp_path / "demo",
                    ignore=shutil.ignore_patterns("data", "experiments"))
    proc = run_cli(str(tmp_path / "config.example.toml"), "--target_count_per_object", "20")
    assert proc.returncode == 0, proc.stderr
    lines = list(json_lines(proc.stdout))
    names = {e["event"] for e in lines}
    assert {"run_started", "round_started", "round_progress", "round_finished",
            "round_merged", "object_done", "run_finished"} <= names
    assert lines[-1]["event"] == "run_finished" and lines[-1]["grasps"] == 60
    assert "optimizing" not in proc.stdout.replace('"round_progress"', "")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP])
def test_sigint_drains_then_resume_completes(layout: Layout, signum: int) -> None:
    exp = "sigint"
    path = layout.write_config(exp_name=exp, target_count_per_object=24, round_batch_size=4,
                               num_iterations=20, env=SLOW_ENV)
    proc = start(path)
    seen: list[dict[str, Any]] = []
    assert proc.stdout is not None
    read_until(proc.stdout, "round_started", seen, count=2)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    seen += list(json_lines(out))
    assert proc.returncode == 130, err
    names = [e["event"] for e in seen]
    assert "drain_started" in names and names[-1] == "run_finished"
    m = layout.manifest(exp)
    statuses = [r["status"] for o in m["objects"].values() for r in o["rounds"].values()]
    assert "running" not in statuses and "interrupted" not in statuses  # they finished
    assert not all(o["done"] for o in m["objects"].values())
    assert m["runs"][-1]["exit_code"] == 130
    resumed = run_cli(str(path))
    assert resumed.returncode == 0, resumed.stderr
    check_complete(layout, exp, ("obj_a", "obj_b", "obj_c"), 24)


def test_second_sigint_stops_children_and_marks_them_interrupted(layout: Layout) -> None:
    exp = "sigint2"
    path = layout.write_config(exp_name=exp, target_count_per_object=8, round_batch_size=4,
                               num_iterations=2000, env=SLOW_ENV,
                               timeouts={"grace_s": 5.0})
    proc = start(path)
    seen: list[dict[str, Any]] = []
    assert proc.stdout is not None
    read_until(proc.stdout, "round_progress", seen)
    proc.send_signal(signal.SIGINT)
    read_until(proc.stdout, "drain_started", seen)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    m = layout.manifest(exp)
    statuses = [r["status"] for o in m["objects"].values() for r in o["rounds"].values()]
    assert "interrupted" in statuses and "running" not in statuses
    assert live_emulators(exp) == []
    fast = layout.write_config(exp_name=exp, target_count_per_object=8, round_batch_size=4,
                               num_iterations=2000, env={"EMULATOR_ITER_S": "0"})
    assert run_cli(str(fast)).returncode == 0
    check_complete(layout, exp, ("obj_a", "obj_b", "obj_c"), 8)


def test_kill_9_then_resume_gives_exact_counts_and_no_orphans(layout: Layout) -> None:
    exp = f"k9{uuid.uuid4().hex[:6]}"
    common = dict(target_count_per_object=14, round_batch_size=4, num_iterations=20,
                  filter={"max_E_pen": 0.002})
    path = layout.write_config(exp_name=exp, env=SLOW_ENV, **common)
    proc = start(path)
    seen: list[dict[str, Any]] = []
    assert proc.stdout is not None
    read_until(proc.stdout, "round_merged", seen, count=3)
    assert live_emulators(exp)  # rounds are running right now
    proc.kill()
    proc.wait(timeout=30)
    # The children die with the supervisor (PR_SET_PDEATHSIG), before any resume.
    deadline = time.monotonic() + 10
    while live_emulators(exp) and time.monotonic() < deadline:
        time.sleep(0.01)  # SIGKILL delivery to the children is immediate but asynchronous
    assert live_emulators(exp) == []
    resumed = run_cli(str(path))
    assert resumed.returncode == 0, resumed.stderr
    codes = ("obj_a", "obj_b", "obj_c")
    check_complete(layout, exp, codes, 14)
    reference = layout.config(exp_name="reference", **common)
    assert run_in_process(reference) == 0
    for code in codes:
        a, b = layout.final(code, exp), layout.final(code, "reference")
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_resume_off_refuses_an_existing_experiment(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    before = (layout.experiments / "t" / "manifest.json").read_bytes()
    proc = run_cli(str(path), "--no-resume")
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and "new exp_name" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (layout.experiments / "t" / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("key,value", [
    ("seed_base", 5), ("round_batch_size", 8), ("num_iterations", 9),
])
def test_resume_refuses_changes_that_alter_grasps(layout: Layout, key: str, value: int) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    proc = run_cli(str(path), f"--{key}", str(value))
    assert proc.returncode == 2 and key in proc.stderr


def test_resume_refuses_a_changed_command(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    command = layout.config_data()["main"]["command"] + ["--vis"]
    changed = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4,
                                  main={"command": command})
    proc = run_cli(str(changed))
    assert proc.returncode == 2 and "command" in proc.stderr


def test_raising_the_target_on_resume_adds_grasps(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a", "obj_b"], target_count_per_object=6,
                               cleanup={"mode": "light"})
    assert run_cli(str(path)).returncode == 0
    proc = run_cli(str(path), "--target_count_per_object", "11")
    assert proc.returncode == 0, proc.stderr
    check_complete(layout, "t", ("obj_a", "obj_b"), 11)
    reference = layout.config(exp_name="ref", object_code_list=["obj_a", "obj_b"],
                              target_count_per_object=11)
    assert run_in_process(reference) == 0
    for code in ("obj_a", "obj_b"):
        np.testing.assert_array_equal(layout.final(code)["qpos_left"],
                                      layout.final(code, "ref")["qpos_left"])


def test_raising_the_target_after_cleanup_keeps_every_merged_grasp(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=6,
                               round_batch_size=4, cleanup={"mode": "remove"})
    assert run_cli(str(path)).returncode == 0
    before = layout.final("obj_a")
    assert run_cli(str(path), "--target_count_per_object", "13").returncode == 0
    after = layout.final("obj_a")
    assert len(after["energy"]) == 13
    for key in before:  # the 6 grasps delivered first are still the first 6
        np.testing.assert_array_equal(after[key][:6] if key != "qpos_names" else after[key],
                                      before[key])
    pairs = set(zip(after["round_id"].tolist(), after["item_index"].tolist()))
    assert len(pairs) == 13


def test_rounds_reloaded_on_resume_reach_final_npz(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=40,
                               merge_stride=100, max_rounds=3)
    assert run_cli(str(path)).returncode == 1  # exhausted: 3 rounds of 4 grasps
    manifest = layout.experiments / "t" / "manifest.json"
    data = json.loads(manifest.read_text())
    # As if killed before the drain's write: rounds held but not in final.npz.
    for rnd in data["objects"]["obj_a"]["rounds"].values():
        rnd["status"] = "finished"
    manifest.write_text(json.dumps(data))
    paths.final(layout.experiments / "t", "obj_a").unlink()
    assert run_cli(str(path)).returncode == 1  # still exhausted: no round runs
    assert len(layout.final("obj_a")["energy"]) == 12
    statuses = {r["status"] for r in layout.manifest()["objects"]["obj_a"]["rounds"].values()}
    assert statuses == {"merged"}


def test_resume_finishes_a_cleanup_cut_short(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=8)
    assert run_cli(str(path)).returncode == 0
    leftover = layout.rounds / "t__obj_a__r0" / "results"
    leftover.mkdir(parents=True)  # as if killed in the middle of removing round folders
    (leftover / "config.txt").write_text("x")
    assert run_cli(str(path)).returncode == 0
    assert not (layout.rounds / "t__obj_a__r0").exists()


def test_resume_of_a_finished_run_starts_nothing(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    proc = run_cli(str(path))
    assert proc.returncode == 0
    assert "round_started" not in {e["event"] for e in json_lines(proc.stdout)}


def test_extending_the_list_keeps_seeds(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_b"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    path = layout.write_config(object_code_list=["obj_a", "obj_b"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    objects = layout.manifest()["objects"]
    assert objects["obj_b"]["index"] == 0 and objects["obj_a"]["index"] == 1
    assert objects["obj_a"]["rounds"]["0"]["seed"] == 1000 + 100000


def test_second_supervisor_on_the_same_experiment_is_refused(layout: Layout) -> None:
    path = layout.write_config(target_count_per_object=40, env=SLOW_ENV, num_iterations=20)
    proc = start(path)
    seen: list[dict[str, Any]] = []
    assert proc.stdout is not None
    read_until(proc.stdout, "round_started", seen)
    second = run_cli(str(path))
    assert second.returncode == 2 and f"pid {proc.pid}" in second.stderr
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130


def test_log_format_console_is_not_json(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    proc = run_cli(str(path), "--log-format", "console")
    assert proc.returncode == 0
    assert "run_finished" in proc.stdout and not proc.stdout.lstrip().startswith("{")


def test_dry_run_prints_the_plan_and_writes_nothing(layout: Layout) -> None:
    path = layout.write_config(seed_base=5)
    proc = run_cli(str(path), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "[1] obj_b: active, 0/10 collected" in proc.stdout
    assert "t__obj_a__r0 seed=5 gpu=0" in proc.stdout
    assert "--name t__obj_a__r0" in proc.stdout and "CUDA_VISIBLE_DEVICES=0" in proc.stdout
    assert "GPU 1: unknown (no memory checks), admitted" in proc.stdout
    assert not layout.experiments.exists() and not layout.rounds.exists()


def test_a_reader_going_away_does_not_stop_the_run(layout: Layout) -> None:
    path = layout.write_config(target_count_per_object=8)
    proc = start(path)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()  # like "| head -1"
    assert proc.wait(timeout=120) == 0
    check_complete(layout, "t", ("obj_a", "obj_b", "obj_c"), 8)
    status = subprocess.run(f"{sys.executable} -m supervisor status {path} | head -1",
                            shell=True, env=cli_env(), capture_output=True, text=True)
    assert status.returncode == 0 and "Traceback" not in status.stderr


def test_status_says_exhausted_and_no_eta_when_nothing_can_finish(layout: Layout) -> None:
    """status called exhausted objects "failed" and showed ETA 0h00m00s."""
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=20,
                               max_rounds=2)
    assert run_cli(str(path)).returncode == 1
    text = run_cli("status", str(path)).stdout
    assert "0 failed, 1 exhausted" in text
    assert "no ETA: nothing left that can finish" in text and "0h00m00s" not in text
