"""The emulator's near-duplicate rounds and its spawn_worker fault (a data-loader worker)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env, live_processes
from supervisor.emulator.faults import WORKER_TAG
from supervisor.emulator.grasps import attractors as emu_attractors, make_grasps, near_duplicates
from supervisor.dataset import results
from supervisor.dataset.dedup import DedupIndex
from supervisor.config.schema import DedupSettings

CODE = "Curver_Storage_Bin_Black_Small"
FAST = {"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0.001"}
DEADLINE_S = 30.0


def emu_argv(name: str, seed: int = 7, batch: int = 4, iters: int = 5) -> list[str]:
    return [sys.executable, "-m", "supervisor.emulator", "--name", name, "--object_code", CODE,
            "--batch_size", str(batch), "--num_iterations", str(iters), "--seed", str(seed),
            "--gpu", "cpu", "--jitter_strength", "0.1"]


def env_with(**extra: str) -> dict[str, str]:
    env = cli_env()
    env.update(FAST)
    env.update(extra)
    return env


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    path = tmp_path / "BimanGrasp-Optimization"
    path.mkdir()
    return path


def result_file(cwd: Path, name: str) -> Path:
    return cwd.parent / "data" / "experiments" / name / "results" / f"{CODE}.npy"


# -- near-duplicates ----------------------------------------------------------------------

@pytest.mark.parametrize("spec,parsed", [
    ("", None), ("0.5", (0.5, 0.001)), ("0.25:0.01", (0.25, 0.01)), ("1:0", (1.0, 0.0)),
    ("0", (0.0, 0.001)),
])
def test_near_duplicate_spec(spec: str, parsed: tuple[float, float] | None) -> None:
    assert near_duplicates(spec) == parsed


@pytest.mark.parametrize("spec", ["x", "1.5", "-0.1", "0.5:-1", "0.5:inf", "nan", "0.5:abc"])
def test_bad_near_duplicate_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="EMULATOR_NEAR_DUPLICATES"):
        near_duplicates(spec)


def poses(grasps: list[dict], key: str) -> np.ndarray:
    return np.array([list(g[key].values()) for g in grasps])


def copies_of_attractors(grasps: list[dict], noise: float) -> np.ndarray:
    """Per grasp, the attractor it copies (within noise, same scale), else -1."""
    att, scales = emu_attractors(CODE)
    x = np.concatenate([poses(grasps, "qpos_left"), poses(grasps, "qpos_right")], axis=1)
    a = np.concatenate([att["left"], att["right"]], axis=1)
    scale = np.array([g["scale"] for g in grasps])
    out = np.full(len(grasps), -1)
    for k in range(len(a)):
        near = (np.abs(x - a[k]).max(axis=1) <= noise) & (scale == scales[k])
        out[near] = k
    return out


def test_a_fraction_of_grasps_copy_the_objects_attractors() -> None:
    g = make_grasps(CODE, 3, 200, 10000, (0.25, 0.002))
    copy_of = copies_of_attractors(g, 0.002)
    assert (copy_of >= 0).sum() == 50
    assert len(set(copy_of[copy_of >= 0].tolist())) > 1
    other = make_grasps(CODE, 4, 200, 10000, (0.25, 0.002))
    assert (copies_of_attractors(other, 0.002) >= 0).sum() == 50  # same attractors, any seed
    again = make_grasps(CODE, 3, 200, 10000, (0.25, 0.002))
    assert np.array_equal(poses(g, "qpos_left"), poses(again, "qpos_left"))
    assert not np.array_equal(copy_of, copies_of_attractors(other, 0.002))


def test_without_near_duplicates_grasps_are_unchanged() -> None:
    plain = make_grasps(CODE, 3, 50, 100)
    assert poses(plain, "qpos_right").tolist() == poses(
        make_grasps(CODE, 3, 50, 100, (0.0, 0.001)), "qpos_right").tolist()
    assert (copies_of_attractors(plain, 0.01) < 0).all()
    assert "__meta__" not in make_grasps(CODE, 3, 2, 100, meta=False)[0]


def test_rounds_of_the_emulator_hold_near_duplicates_that_dedup_removes(cwd: Path) -> None:
    env = env_with(EMULATOR_NEAR_DUPLICATES="0.5")
    columns = []
    for seed in (1, 2, 3):
        name = f"t__{CODE}__r{seed}"
        proc = subprocess.run(emu_argv(name, seed=seed, batch=16), cwd=cwd, env=env,
                              capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        columns.append(results.read_round(result_file(cwd, name), 16))

    def dedup() -> list[list[bool]]:
        index = DedupIndex(DedupSettings(enabled=True))
        return [index.admit(c).tolist() for c in columns]

    masks = dedup()
    items = [np.load(result_file(cwd, f"t__{CODE}__r{s}"), allow_pickle=True) for s in (1, 2, 3)]
    copy_of = copies_of_attractors([g for it in items for g in it], 0.001)
    assert (copy_of >= 0).sum() == 24
    kept = np.concatenate(masks)
    assert kept[copy_of < 0].all()  # originals all stay
    firsts = {int(np.flatnonzero(copy_of == k)[0]) for k in set(copy_of[copy_of >= 0].tolist())}
    assert set(np.flatnonzero(kept & (copy_of >= 0)).tolist()) == firsts
    assert dedup() == masks  # deterministic


def test_bad_spec_or_mode_fails_before_any_folder(cwd: Path) -> None:
    for env in (env_with(EMULATOR_NEAR_DUPLICATES="lots"), env_with(EMULATOR_MODE="both")):
        proc = subprocess.run(emu_argv("bad"), cwd=cwd, env=env, capture_output=True,
                              timeout=60)
        assert proc.returncode == 1 and b"ValueError" in proc.stderr
        assert not (cwd.parent / "data").exists()


# -- spawn_worker ---------------------------------------------------------------------------

def workers(name: str) -> list[int]:
    """Live (not zombie) worker processes of round ``name``, found by /proc cmdline."""
    return [pid for pid, argv in live_processes()
            if WORKER_TAG.encode() in argv and name.encode() in argv]


def read_until(proc: subprocess.Popen, marker: bytes) -> None:
    assert proc.stdout is not None
    deadline, seen = time.monotonic() + DEADLINE_S, b""
    fd = proc.stdout.fileno()
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {seen!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            assert chunk, f"stdout closed before {marker!r}: {seen!r}"
            seen += chunk


def wait_gone(name: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while workers(name):
        assert time.monotonic() < deadline, f"worker of {name} still alive"
        time.sleep(0.02)


def one_worker(name: str) -> int:
    """The worker of round ``name``, waited for: on a loaded machine /proc may show it a
    moment after the emulator's line."""
    deadline = time.monotonic() + DEADLINE_S
    while not (found := workers(name)):
        assert time.monotonic() < deadline, f"no worker of {name}"
        time.sleep(0.02)
    (pid,) = found
    return pid


def kill_group(proc: subprocess.Popen) -> None:
    """Whatever a failed assertion left behind: the session we started, nothing else."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=DEADLINE_S)
    assert proc.stdout is not None
    proc.stdout.close()


def start(cwd: Path, name: str, faults: str) -> subprocess.Popen:
    env = env_with(EMULATOR_FAULTS=f"{name}={faults}", EMULATOR_WORKER_MAX_S="60")
    return subprocess.Popen(emu_argv(name, iters=100000), cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_worker_is_a_grandchild_in_the_rounds_process_group(cwd: Path) -> None:
    name = "exp__obj__r3"
    proc = start(cwd, name, "spawn_worker")
    try:
        read_until(proc, b"Starting optimization...")
        pid = one_worker(name)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) == proc.pid  # ppid: the emulator
        assert os.getpgid(pid) == os.getpgid(proc.pid) == proc.pid
        # SIGINT ends the emulator normally (KeyboardInterrupt): it stops its worker.
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DEADLINE_S) == -signal.SIGINT
        assert workers(name) == []
    finally:
        kill_group(proc)


def test_worker_outlives_a_killed_emulator_until_its_group_is_killed(cwd: Path) -> None:
    name = "exp__obj__r4"
    proc = start(cwd, name, "spawn_worker")
    try:
        read_until(proc, b"Starting optimization...")
        pid = one_worker(name)
        proc.kill()  # the emulator alone, as PR_SET_PDEATHSIG would
        assert proc.wait(timeout=DEADLINE_S) == -signal.SIGKILL
        assert workers(name) == [pid]  # an orphan now
        os.killpg(proc.pid, signal.SIGKILL)
        wait_gone(name)
    finally:
        kill_group(proc)


@pytest.mark.parametrize("faults,code", [("spawn_worker", 0), ("spawn_worker+exit:5", 5),
                                         ("spawn_worker+crash", 1)])
def test_worker_ends_with_the_emulator(cwd: Path, faults: str, code: int) -> None:
    name = f"exp__obj__r{code}"
    env = env_with(EMULATOR_FAULTS=f"{name}={faults}", EMULATOR_WORKER_MAX_S="60")
    # capture_output waits for EOF: a worker left holding stdout would hang this call.
    proc = subprocess.run(emu_argv(name, iters=20), cwd=cwd, env=env, capture_output=True,
                          timeout=DEADLINE_S)
    assert proc.returncode == code, proc.stderr
    assert workers(name) == []
    if code == 0:
        assert results.read_round(result_file(cwd, name), 4)["energy"].shape == (4,)
