"""What the Slurm tests share: one real Slurm cluster for the whole session (two nodes of
four fake GPUs, tests/slurmcluster.py: loopback only, stopped by pid by the fixture that
started it), and ``Run``, a supervisor started from the command line whose JSON lines the
test waits on (never a sleep).

Outside CI the tests skip where Slurm's and munge's programs are not installed; under
CI=true they fail instead (.ci/run installs them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from conftest import cli_env
from slurmcluster import SlurmCluster, missing

IN_CI = os.environ.get("CI", "").lower() in ("true", "1")
WAIT_S = 60.0


def need_slurm() -> None:
    lacking = missing()
    if lacking:
        message = (f"Slurm is not installed (missing {', '.join(lacking)}): apt-get install "
                   "slurmctld slurmd slurm-client munge")
        if IN_CI:
            pytest.fail(f"CI=true but {message}; .ci/run installs them")
        pytest.skip(message)
    if os.geteuid() != 0 and not IN_CI:
        pytest.skip("the test cluster's daemons run as root (SlurmUser=root)")


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    need_slurm()
    cluster = SlurmCluster(nodes=2, gpus=4, cpus=8)
    saved = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        cluster.remove()


def slurm_config(layout: Any, **overrides: Any) -> dict[str, Any]:
    """The tests' config (conftest.Layout) on Slurm: ``gpus = "all"``, rounds of the
    emulator as jobs (or steps), the emulator's attempts counted across jobs."""
    backend = {"kind": "slurm", "mode": "jobs", "max_jobs": 8, **overrides.pop("backend", {})}
    env = {"PYTHONPATH": cli_env()["PYTHONPATH"], **overrides.pop("env", {})}
    return layout.config_data(gpus="all", backend=backend, env=env, **overrides)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Supervisors a test started: a failed test leaves none running (killed by pid)."""
    started: list[Run] = []
    Run.started = started
    yield started
    Run.started = None
    for run in started:
        run.kill()


class Run:
    """``python -m supervisor ARGS`` in the background; its JSON lines collected."""

    started: list[Run] | None = None  # the ``runs`` fixture's list, while a test runs

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", *args], cwd=cwd,
            env={**cli_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, stdin=subprocess.DEVNULL)
        self.stderr = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.err_reader = threading.Thread(target=self._read_err, daemon=True)
        self.err_reader.start()
        if Run.started is not None:
            Run.started.append(self)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "(not json)", "line": line}
            with self.cond:
                self.events.append(event)
                self.cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def wait_for(self, event: str, where: Callable[[dict[str, Any]], bool] = lambda e: True,
                 count: int = 1, timeout_s: float = WAIT_S) -> list[dict[str, Any]]:
        """The first ``count`` lines of ``event`` that ``where`` accepts."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                found = [e for e in self.events if e.get("event") == event and where(e)]
                if len(found) >= count:
                    return found[:count]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self.reader.is_alive()):
                    raise AssertionError(f"no {count} x {event} within {timeout_s:g} s; "
                                         f"exit {self.proc.poll()}; seen "
                                         f"{[e.get('event') for e in self.events][-30:]}; "
                                         f"stderr {self.stderr[-2000:]}")
                self.cond.wait(min(left, 0.5))

    def signal(self, sig: int = signal.SIGINT) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = WAIT_S) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self.reader.join(timeout=5)
        self.err_reader.join(timeout=5)
        return code

    def named(self, event: str) -> list[dict[str, Any]]:
        with self.cond:
            return [e for e in self.events if e.get("event") == event]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def our_jobs(cluster: SlurmCluster, exp_name: str) -> list[str]:
    """Jobs of the experiment still pending or running."""
    out = cluster.client("squeue", "-h", "-o", "%i|%j", check=False)
    return [line.split("|")[0] for line in out.splitlines()
            if "|" in line and line.split("|", 1)[1].startswith(f"{exp_name}__")]


def read_fifo(path: Path, timeout_s: float) -> str:
    """What a job writes into the named pipe ``path`` (opening it blocks until the job
    opens it to write: a wait on the job, not a poll)."""
    got: list[str] = []

    def read() -> None:
        with open(path) as f:
            got.append(f.read().strip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert got, f"nothing written to {path} within {timeout_s:g} s"
    return got[0]
