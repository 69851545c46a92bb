"""The Slurm backend on a real Slurm cluster (tests/slurmcluster.py: slurmctld, two slurmd
nodes of four fake GPUs, munged; loopback only, one for the session, stopped by pid), with
emulator children, through ``python -m supervisor`` as a user runs it. Every run's
final.npz arrays are compared with the local backend's for the same config.

Outside CI these skip without Slurm's programs; under CI=true they fail instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from conftest import Layout, cli_env, run_in_process, write_toml
from slurmcluster import SlurmCluster
from slurmtest import Run, our_jobs, read_fifo, runs, slurm, slurm_config  # noqa: F401

pytestmark = pytest.mark.usefixtures("runs")

CODES = ("obj_a", "obj_b", "obj_c")


def rounds_of(seconds: float, **env: str) -> dict[str, Any]:
    """Emulator rounds that iterate for about ``seconds`` (20 iterations)."""
    return {"num_iterations": 20, "env": {"EMULATOR_ITER_S": str(seconds / 20), **env}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    """The local backend's datasets for the tests' config, by num_iterations."""
    out = {}
    for iterations in (5, 20):
        layout = Layout(tmp_path_factory.mktemp(f"local{iterations}"))
        config = layout.config(gpus=list(range(8)), num_iterations=iterations)
        assert run_in_process(config) == 0
        out[iterations] = {code: layout.final(code) for code in CODES}
    return out


def same_as_local(layout: Layout, reference: dict[int, dict[str, Any]], iterations: int = 5,
                  exp_name: str = "t") -> None:
    for code in CODES:
        got, want = layout.final(code, exp_name), reference[iterations][code]
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{code} {key}")


def start(layout: Layout, name: str = "config.toml", **overrides: Any) -> tuple[Path, Run]:
    path = write_toml(layout.root / name, slurm_config(layout, **overrides))
    return path, Run(str(path), cwd=layout.root)


def manifest_rounds(layout: Layout, exp_name: str = "t") -> list[dict[str, Any]]:
    m = layout.manifest(exp_name)
    return [r for o in m["objects"].values() for r in o["rounds"].values()]


# -- both modes, end to end --------------------------------------------------------------
def test_rounds_run_as_jobs_and_make_the_local_datasets(slurm: SlurmCluster, layout: Layout,
                                                        reference: Any) -> None:
    _, run = start(layout, keep_intermediate=True)
    assert run.wait() == 0, run.stderr
    same_as_local(layout, reference)
    merged = run.named("round_merged")
    assert len(merged) == 9
    assert all(e["node"] in ("n0", "n1") and e["job_id"].isdigit() and isinstance(e["gpu"], int)
               for e in merged), merged
    progress = run.named("round_progress")
    assert progress and all(e["node"] in ("n0", "n1") and "job_id" in e for e in progress)
    for rnd in manifest_rounds(layout):
        # {gpu} and CUDA_VISIBLE_DEVICES were both the GPU Slurm gave the job
        config = (layout.rounds / rnd["name"] / "results" / "config.txt").read_text()
        assert f"gpu='{rnd['device']}'" in config and \
            f"cuda_visible_devices='{rnd['device']}'" in config, config
        assert "cuda_device_order='PCI_BUS_ID'" in config
        assert rnd["gpu"].startswith("slurm/gpu") and rnd["node"] in ("n0", "n1")
    assert not our_jobs(slurm, "t")
    for command in (["export", "config.toml", "--out", "npy"], ["report", "config.toml"]):
        done = subprocess.run([sys.executable, "-m", "supervisor", *command], cwd=layout.root,
                              env=cli_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr  # as on one server
    assert sorted(p.name for p in (layout.root / "npy").iterdir()) == [f"{c}.npy" for c in CODES]


def test_rounds_run_as_steps_of_the_supervisors_allocation(slurm: SlurmCluster, layout: Layout,
                                                           reference: Any) -> None:
    """The supervisor inside an sbatch allocation of 2 nodes x 4 GPUs (mode "auto")."""
    path = write_toml(layout.root / "config.toml",
                      slurm_config(layout, backend={"mode": "auto"}))
    env = cli_env()
    script, rc = layout.root / "steps.sh", layout.root / "rc"
    os.mkfifo(rc)  # the script writes the supervisor's exit code there: the test waits on it
    script.write_text(f"#!/bin/sh\n{sys.executable} -m supervisor {path} "
                      f"> {layout.root}/run.jsonl 2> {layout.root}/err\necho $? > {rc}\n")
    job = slurm.client("sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=4",
                       "--gres=gpu:4", "--cpus-per-task=2", "--no-kill",
                       f"--output={layout.root}/job.out", f"--chdir={layout.root}",
                       f"--export=ALL,PYTHONPATH={env['PYTHONPATH']}", str(script)).strip()
    assert read_fifo(rc, 90) == "0", (layout.root / "err").read_text()
    same_as_local(layout, reference)
    events = [json.loads(line) for line in (layout.root / "run.jsonl").read_text().splitlines()]
    merged = [e for e in events if e["event"] == "round_merged"]
    assert len(merged) == 9 and all(e["job_id"].startswith(f"{job}.") for e in merged)
    assert {e["node"] for e in merged} == {"n0", "n1"}
    started = next(e for e in events if e["event"] == "slurm_cluster")
    assert started["mode"] == "steps" and started["places"] == 8


# -- capacity: not charged ---------------------------------------------------------------
@pytest.fixture
def node_back(slurm: SlurmCluster) -> Iterator[None]:
    yield
    slurm.resume("n1")


def test_a_job_cancelled_by_someone_else_and_a_node_set_down_are_not_charged(
        slurm: SlurmCluster, layout: Layout, reference: Any, node_back: None) -> None:
    _, run = start(layout, retry={"max_attempts": 1}, **rounds_of(3.0))
    first = run.wait_for("job_running", lambda e: e["node"] == "n0")[0]
    run.wait_for("job_running", lambda e: e["node"] == "n1")
    slurm.client("scancel", first["job_id"])  # someone else's scancel
    slurm.set_down("n1")
    run.wait_for("round_interrupted", lambda e: "node failed" in e["reason"])
    slurm.resume("n1")
    assert run.wait(90) == 0, run.stderr
    same_as_local(layout, reference, 20)
    reasons = [e["reason"] for e in run.named("round_interrupted")]
    assert any("cancelled by someone else" in r for r in reasons), reasons
    assert not run.named("round_failed") and not run.named("node_excluded")
    assert not our_jobs(slurm, "t")


# -- kill -9 and resume --------------------------------------------------------------------
def test_a_killed_supervisor_leaves_its_jobs_and_the_next_one_adopts_them(
        slurm: SlurmCluster, layout: Layout, reference: Any) -> None:
    path, run = start(layout, **rounds_of(2.5))
    running = run.wait_for("job_running", count=4)
    run.proc.send_signal(signal.SIGKILL)
    run.wait()
    left = our_jobs(slurm, "t")
    assert {e["job_id"] for e in running} <= set(left)  # not its children: they run on
    again = Run(str(path), cwd=layout.root)
    found = again.wait_for("jobs_found")[0]["jobs"]
    assert set(found.values()) >= {e["job_id"] for e in running}
    third = subprocess.run([sys.executable, "-m", "supervisor", str(path)], cwd=layout.root,
                           env=cli_env(), capture_output=True, text=True, timeout=60)
    assert third.returncode == 2 and "lock" in third.stderr.lower(), third.stderr
    assert again.wait(90) == 0, again.stderr
    same_as_local(layout, reference, 20)  # every result merged exactly once
    resubmitted = {e["round"] for e in again.named("job_submitted")}
    assert not resubmitted & set(found), "an adopted round was submitted again"
    assert not our_jobs(slurm, "t")


# -- signals ---------------------------------------------------------------------------------
def test_sigint_drains_the_queue_and_a_second_one_cancels_what_runs(
        slurm: SlurmCluster, layout: Layout, reference: Any) -> None:
    path, run = start(layout, backend={"max_jobs": 9}, **rounds_of(3.0))
    started = {e["round"] for e in run.wait_for("job_running", count=8)}
    waiting = [e for e in run.wait_for("job_submitted", count=9) if e["round"] not in started]
    status = subprocess.run([sys.executable, "-m", "supervisor", "status", str(path)],
                            cwd=layout.root, env=cli_env(), capture_output=True, text=True,
                            timeout=60)
    assert "slurm: 1 pending" in status.stdout and waiting[0]["round"] in status.stdout, \
        status.stdout
    run.signal(signal.SIGINT)
    interrupted = run.wait_for("round_interrupted", timeout_s=10)[0]
    assert interrupted["round"] == waiting[0]["round"] and "drained" in interrupted["reason"]
    assert run.wait(60) == 130
    assert len(run.named("round_merged")) == 8  # the running ones finished and merged
    assert not our_jobs(slurm, "t")

    second = Run(str(path), cwd=layout.root)
    second.wait_for("job_running")
    second.signal(signal.SIGINT)
    second.wait_for("drain_started")
    second.signal(signal.SIGINT)
    assert second.wait(30) == 130
    stopped = second.named("round_interrupted")
    assert stopped and all("stopped by the supervisor" in e["reason"] for e in stopped)
    assert not our_jobs(slurm, "t")

    last = Run(str(path), cwd=layout.root)
    assert last.wait(60) == 0, last.stderr
    same_as_local(layout, reference, 20)


# -- failures ----------------------------------------------------------------------------
def test_a_failing_job_and_one_at_its_time_limit_are_charged_and_retried(
        slurm: SlurmCluster, layout: Layout, reference: Any) -> None:
    faults = "t__obj_a__r0=exit;t__obj_b__r0=hang"
    _, run = start(layout, retry={"max_attempts": 2}, backend={"time_limit": "10"},
                   **rounds_of(1.0, EMULATOR_FAULTS=faults))
    hung = run.wait_for("job_running", lambda e: e["round"] == "t__obj_b__r0")[0]
    # The round is "longer than its limit": Slurm ends it at its next time-limit check.
    slurm.client("scontrol", "update", f"jobid={hung['job_id']}", "TimeLimit=0")
    assert run.wait(90) == 0, run.stderr
    same_as_local(layout, reference, 20)
    failed = {e["round"]: e for e in run.named("round_failed")}
    assert failed["t__obj_a__r0"]["reason"] == "exit code 3"
    limit = failed["t__obj_b__r0"]["reason"]
    assert limit.startswith("time_limit:") and "'10'" in limit and "of running" in limit
    assert failed["t__obj_b__r0"]["node"] in ("n0", "n1")
    assert not our_jobs(slurm, "t")


# -- Slurm unreachable -------------------------------------------------------------------
def test_slurm_unreachable_at_start_is_one_line_and_exit_2(slurm: SlurmCluster,
                                                           layout: Layout) -> None:
    path = write_toml(layout.root / "config.toml", slurm_config(layout))
    down = layout.root / "down.conf"  # a controller that is not there
    text = slurm.conf.read_text()
    port = next(w for w in text.split() if w.startswith("SlurmctldPort="))
    down.write_text(text.replace(port, "SlurmctldPort=9"))
    garbled = layout.root / "garbled.conf"
    garbled.write_text("ClusterName test\n")  # no "=": Slurm cannot parse it
    cases = [({"PATH": os.path.dirname(sys.executable)}, "`sbatch` is not on PATH"),
             ({"SLURM_CONF": str(layout.root / "missing.conf")}, "is not a file"),
             ({"SLURM_CONF": str(down)}, "controller does not answer"),
             ({"SLURM_CONF": ""}, "SLURM_CONF is set but empty"),  # not a minute's wait
             ({"SLURM_CONF": str(garbled)},
              ("cannot read its configuration", 'line 1: "ClusterName test"', "fix that file"))]
    if not Path("/etc/slurm/slurm.conf").exists():  # Slurm's default: none on this machine
        cases.append(({"SLURM_CONF": None}, ("cannot read its configuration", "Could not "
                                             "establish a configuration source", "set SLURM_CONF")))
    for env, expected in cases:
        full = {k: v for k, v in {**cli_env(), **env}.items() if v is not None}
        done = subprocess.run([sys.executable, "-m", "supervisor", str(path)], cwd=layout.root,
                              env=full, capture_output=True, text=True, timeout=60)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr
        wanted = (expected,) if isinstance(expected, str) else expected
        assert lines[0].startswith("error: Slurm") and all(w in lines[0] for w in wanted), lines
    assert not layout.experiments.exists()  # nothing written


def test_the_controller_going_away_mid_run_abandons_no_round(
        slurm: SlurmCluster, layout: Layout, reference: Any) -> None:
    _, run = start(layout, **rounds_of(2.0))
    run.wait_for("job_running", count=4)
    slurm.stop_controller()
    try:
        run.wait_for("slurm_retry")
    finally:
        slurm.start_controller()
    assert run.wait(90) == 0, run.stderr
    same_as_local(layout, reference, 20)
    assert not run.named("round_failed") and not our_jobs(slurm, "t")


# -- a failing node, --dry-run ----------------------------------------------------------------
def test_a_node_where_rounds_keep_failing_is_excluded(slurm: SlurmCluster, layout: Layout,
                                                      reference: Any) -> None:
    """Every round that lands on n1 fails there (its command exits 3 on that node)."""
    from conftest import EMULATOR_COMMAND
    sick = ["sh", "-c", 'if [ "$SLURMD_NODENAME" = n1 ]; then echo sick >&2; exit 3; fi; '
            'exec "$@"', "sh", *EMULATOR_COMMAND]
    _, run = start(layout, main={"command": sick}, retry={"max_attempts": 5},
                   gpu={"quarantine_after": 2}, **rounds_of(1.0))
    excluded = run.wait_for("node_excluded")[0]
    assert excluded["node"] == "n1" and "in a row failed" in excluded["reason"]
    assert run.wait(90) == 0, run.stderr
    same_as_local(layout, reference, 20)
    after = [e for e in run.named("job_submitted") if e["exclude"]]
    assert after and all(e["exclude"] == ["n1"] for e in after)
    ids = {e["job_id"] for e in after}
    assert all(e["node"] == "n0" for e in run.named("job_running") if e["job_id"] in ids)


def test_dry_run_checks_the_options_with_sbatch_test_only(slurm: SlurmCluster,
                                                          layout: Layout) -> None:
    path = write_toml(layout.root / "config.toml",
                      slurm_config(layout, backend={"partition": "debug", "time_limit": "30"}))
    done = subprocess.run([sys.executable, "-m", "supervisor", str(path), "--dry-run"],
                          cwd=layout.root, env=cli_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "partition debug" in done.stdout and "time limit 30" in done.stdout
    assert "sbatch --test-only: sbatch: Job" in done.stdout and "CUDA_VISIBLE_DEVICES={gpu}" in done.stdout
    bad = write_toml(layout.root / "bad.toml", slurm_config(layout, backend={"partition": "nope"}))
    done = subprocess.run([sys.executable, "-m", "supervisor", str(bad)], cwd=layout.root,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Slurm refused" in lines[0], lines
    assert "partition" in lines[0] and not layout.experiments.exists()
