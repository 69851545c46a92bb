"""The emulator's fault modes (``EMULATOR_FAULTS``) and its worker grandchild: how an
attempt of a round fails, crashes, hangs or writes garbage. See supervisor.emulator.program."""

from __future__ import annotations

import atexit
import fnmatch
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FAULT_MODES = frozenset({
    "ok", "exit", "crash", "crash_mid_write", "truncated", "hang", "ignore_sigterm",
    "sigkill", "nan", "inf", "wrong_length", "wrong_type", "wrong_dtype", "missing_key",
    "extra_key", "spawn_worker",
})
WORKER_TAG = "emulator-worker"
WORKER_CODE = (
    "import sys, time\n"
    "end = time.monotonic() + float(sys.argv[1])\n"
    "while time.monotonic() < end:\n"
    "    time.sleep(0.1)\n"
)

def fault_modes(name: str, attempt: int, spec: str) -> set[str]:
    """The fault modes for this attempt of round ``name`` under ``EMULATOR_FAULTS``."""
    for rule in filter(None, (r.strip() for r in spec.split(";"))):
        glob, _, modes = rule.partition("=")
        if not fnmatch.fnmatchcase(name, glob.strip()):
            continue
        chosen = "ok"
        for i, mode in enumerate(m.strip() for m in modes.split(",")):
            if i + 1 == attempt or (mode.endswith("*") and i + 1 <= attempt):
                chosen = mode.rstrip("*")
                if i + 1 == attempt:
                    break
        parts = set(chosen.split("+"))
        unknown = {p.split(":")[0] for p in parts} - FAULT_MODES
        if unknown:
            raise ValueError(f"EMULATOR_FAULTS: unknown mode(s) {sorted(unknown)}")
        return parts
    return {"ok"}


def next_attempt(name: str) -> int:
    state = os.environ.get("EMULATOR_STATE_DIR")
    if not state:
        return 1
    path = Path(state) / f"{name}.attempts"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("x")
    return path.stat().st_size


def _exit_code(modes: set[str]) -> int | None:
    for mode in modes:
        if mode.split(":")[0] == "exit":
            return int(mode.split(":")[1]) if ":" in mode else 3
    return None


def corrupt(grasps: list[dict], modes: set[str]) -> object:
    """Apply the result-file faults; returns what gets saved."""
    if "nan" in modes:
        grasps[len(grasps) // 2]["E_pen"] = float("nan")
    if "inf" in modes:
        grasps[0]["qpos_left"]["WRJTx"] = float("inf")
    if "wrong_length" in modes:
        grasps = grasps[:-1]
    if "missing_key" in modes:
        del grasps[-1]["E_fc"]
    if "extra_key" in modes:
        grasps[-1]["E_surprise"] = 1.0
    if "wrong_type" in modes:
        return {"grasps": grasps}
    if "wrong_dtype" in modes:
        return np.array([[g["energy"], g["E_pen"]] for g in grasps], dtype=np.float32)
    return grasps


def _mid_run_faults(modes: set[str]) -> None:
    code = _exit_code(modes)
    if code is not None:
        sys.stderr.write("\nRuntimeError: CUDA error: an illegal memory access was encountered\n")
        sys.exit(code)
    if "sigkill" in modes:
        os.kill(os.getpid(), signal.SIGKILL)
    if "hang" in modes:
        while True:
            time.sleep(3600)


def _save(path: Path, payload: object, modes: set[str]) -> None:
    if modes & {"crash_mid_write", "truncated"}:
        data = pickle.dumps(np.array(payload, dtype=object), protocol=3)
        with path.open("wb") as f:
            f.write(b"\x93NUMPY" + data[: len(data) // 2])
            f.flush()
        if "crash_mid_write" in modes:
            os._exit(1)
        return
    if isinstance(payload, list):
        arr = np.empty(len(payload), dtype=object)
        arr[:] = payload
        payload = arr
    np.save(path, payload, allow_pickle=True)


def _spawn_worker(name: str) -> None:
    """A grandchild in our process group that outlives us unless we end normally."""
    max_s = os.environ.get("EMULATOR_WORKER_MAX_S", "300")
    worker = subprocess.Popen([sys.executable, "-c", WORKER_CODE, max_s, WORKER_TAG, name],
                              stdin=subprocess.DEVNULL)

    def stop() -> None:
        worker.terminate()
        try:
            worker.wait(timeout=5)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    atexit.register(stop)


