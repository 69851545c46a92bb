"""The emulator honours the contract of main.py that docs/main-py.md describes."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, cli_env
from supervisor.emulator.faults import fault_modes
from supervisor.emulator.grasps import make_grasps
from supervisor.dataset import results

CODE = "Curver_Storage_Bin_Black_Small"


def emu_args(name: str = "e1", code: str = CODE, batch: int = 4, iters: int = 5,
             seed: int = 7, gpu: str = "cpu", jitter: bool = True) -> list[str]:
    args = ["--name", name, "--object_code", code, "--batch_size", str(batch),
            "--num_iterations", str(iters), "--seed", str(seed), "--gpu", gpu]
    return args + (["--jitter_strength", "0.1"] if jitter else [])


def run_emu(cwd: Path, args: list[str], env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
    full_env = cli_env()
    full_env.update({"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0.001"})
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "supervisor.emulator", *args], cwd=cwd,
                          env=full_env, capture_output=True, timeout=60, **kw)


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    path = tmp_path / "BimanGrasp-Optimization"
    path.mkdir()
    return path


def test_writes_results_like_main_py(cwd: Path) -> None:
    proc = run_emu(cwd, emu_args())
    assert proc.returncode == 0, proc.stderr
    out = cwd.parent / "data" / "experiments" / "e1"
    assert {p.name for p in (out / "results").iterdir()} == {"config.txt", f"{CODE}.npy"}
    assert any((out / "logs").iterdir())
    assert (out / "results" / "config.txt").read_text().startswith("ExperimentConfig(name='e1'")
    items = np.load(out / "results" / f"{CODE}.npy", allow_pickle=True)
    real = np.load(FIXTURES / "results" / "probe1" / f"{CODE}.npy", allow_pickle=True)
    assert items.dtype == object and items.shape == (4,)
    assert list(items[0]) == list(real[0])  # exactly the keys, in the same order
    for key in results.QPOS_KEYS:
        assert list(items[0][key]) == list(real[0][key])
    assert all(type(v) is float for v in items[0]["qpos_left"].values())
    assert items[2]["__meta__"] == {"object_code": CODE, "item_index": 2}
    stdout = proc.stdout.decode()
    assert "=== Experiment Configuration ===" in stdout
    assert "Experiment completed: e1" in stdout and "optimizing" not in stdout
    stderr = proc.stderr.decode()
    assert "UserWarning" in stderr and "\roptimizing: 100%" in stderr and stderr.endswith("]\n")


def test_same_seed_same_bytes_other_seed_other_bytes(cwd: Path) -> None:
    def digest(name: str, seed: int) -> str:
        assert run_emu(cwd, emu_args(name=name, seed=seed)).returncode == 0
        path = cwd.parent / "data" / "experiments" / name / "results" / f"{CODE}.npy"
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest("a", 3) == digest("b", 3) != digest("c", 4)


def test_energies_look_real() -> None:
    grasps = make_grasps("x", 1, 2000, 10000)
    e_pen = np.array([g["E_pen"] for g in grasps])
    passing = (e_pen < 0.0015).mean()
    assert 0.5 < passing < 0.95
    e_fc = np.array([g["E_fc"] for g in grasps])
    assert 0.1 < np.median(e_fc) < 1.0


def test_gpu_trap_sets_cuda_visible_devices_from_gpu(cwd: Path) -> None:
    proc = run_emu(cwd, emu_args(gpu="3"),
                   env={"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert proc.returncode == 0
    text = (cwd.parent / "data/experiments/e1/results/config.txt").read_text()
    assert "cuda_visible_devices='3'" in text and "physical_gpu='3'" in text


def test_wipes_its_output_at_start(cwd: Path) -> None:
    stale = cwd.parent / "data/experiments/e1/results/stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    assert run_emu(cwd, emu_args()).returncode == 0
    assert not stale.exists()


def test_unknown_object_fails_before_creating_folders(cwd: Path) -> None:
    (cwd.parent / "data" / "meshdata" / CODE).mkdir(parents=True)
    proc = run_emu(cwd, emu_args(code="no_such_object"))
    assert proc.returncode == 1
    assert b"Traceback" in proc.stderr and b"No mesh found for object" in proc.stderr
    assert not (cwd.parent / "data" / "experiments").exists()


def test_missing_jitter_strength_crashes_like_the_fork(cwd: Path) -> None:
    proc = run_emu(cwd, emu_args(jitter=False))
    assert proc.returncode == 1 and b"TypeError" in proc.stderr


def test_unknown_flag_is_an_argparse_error(cwd: Path) -> None:
    assert run_emu(cwd, [*emu_args(), "--colour", "red"]).returncode == 2


def test_zero_batch_fails_zero_iterations_succeeds(cwd: Path) -> None:
    assert run_emu(cwd, emu_args(batch=0)).returncode == 1
    assert run_emu(cwd, emu_args(iters=0)).returncode == 0


def test_sigint_leaves_config_but_no_result(cwd: Path) -> None:
    env = cli_env()
    env.update({"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0.05"})
    # A shell's "&" starts jobs with SIGINT ignored, and children inherit that: give the
    # emulator the default disposition, as an interactive terminal would.
    proc = subprocess.Popen([sys.executable, "-m", "supervisor.emulator",
                             *emu_args(iters=1000)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(b"Starting optimization"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGINT
    assert b"KeyboardInterrupt" in err
    results_dir = cwd.parent / "data/experiments/e1/results"
    assert (results_dir / "config.txt").exists() and not (results_dir / f"{CODE}.npy").exists()


@pytest.mark.parametrize("spec,attempt,modes", [
    ("*r1=exit", 1, {"exit"}),
    ("*r1=exit", 2, {"ok"}),
    ("*r1=exit,nan", 2, {"nan"}),
    ("*=hang+ignore_sigterm*", 5, {"hang", "ignore_sigterm"}),
    ("other=exit", 1, {"ok"}),
])
def test_fault_spec(spec: str, attempt: int, modes: set[str]) -> None:
    assert fault_modes("exp__o__r1", attempt, spec) == modes


@pytest.mark.parametrize("mode,reason", [
    ("nan", "non-finite E_pen"), ("inf", "non-finite qpos_left"),
    ("wrong_length", "wrong batch length"), ("wrong_type", "holds a dict"),
    ("wrong_dtype", "float32"), ("missing_key", "lacks key"),
    ("extra_key", "differ from grasp 0"), ("truncated", "unreadable"),
])
def test_result_faults_are_caught_by_the_reader(cwd: Path, mode: str, reason: str) -> None:
    proc = run_emu(cwd, emu_args(), env={"EMULATOR_FAULTS": f"e1={mode}"})
    assert proc.returncode == 0
    with pytest.raises(results.ResultError, match=reason):
        results.read_round(cwd.parent / f"data/experiments/e1/results/{CODE}.npy", 4)


def test_crash_mid_write_leaves_a_partial_file(cwd: Path) -> None:
    proc = run_emu(cwd, emu_args(), env={"EMULATOR_FAULTS": "e1=crash_mid_write"})
    assert proc.returncode == 1
    path = cwd.parent / f"data/experiments/e1/results/{CODE}.npy"
    assert path.exists()
    with pytest.raises(results.ResultError, match="unreadable"):
        results.read_round(path, 4)


def test_sigkill_and_exit_faults(cwd: Path) -> None:
    assert run_emu(cwd, emu_args(), env={"EMULATOR_FAULTS": "e1=sigkill"}).returncode == -9
    assert run_emu(cwd, emu_args(), env={"EMULATOR_FAULTS": "e1=exit:7"}).returncode == 7


def test_attempts_are_counted_per_name(cwd: Path, tmp_path: Path) -> None:
    env = {"EMULATOR_FAULTS": "e1=exit", "EMULATOR_STATE_DIR": str(tmp_path / "state")}
    assert run_emu(cwd, emu_args(), env=env).returncode == 3
    assert run_emu(cwd, emu_args(), env=env).returncode == 0
    assert os.path.getsize(tmp_path / "state" / "e1.attempts") == 2
