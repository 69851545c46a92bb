from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import anyio
import pytest

from supervisor.backends import runner

pytestmark = pytest.mark.anyio


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def run(code: str, tmp_path: Path, **kw) -> tuple[runner.ChildExit, list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []
    with anyio.fail_after(30):
        exit_ = await runner.run_child(py(code), cwd=tmp_path, env=dict(os.environ),
                                       on_line=lambda s, line: lines.append((s, line)), **kw)
    return exit_, lines


async def test_streams_split_on_newline_and_carriage_return(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.stdout.write('banner\\nsecond\\n'); sys.stdout.flush()\n"
        "sys.stderr.write('\\rbar 1/3\\rbar 2/3\\rbar 3/3\\n'); sys.stderr.flush()\n"
        "sys.stdout.write('no newline at end')\n"
    )
    exit_, lines = await run(code, tmp_path)
    assert exit_.returncode == 0 and exit_.stopped is None
    assert [t for s, t in lines if s == "stdout"] == ["banner", "second", "no newline at end"]
    assert [t for s, t in lines if s == "stderr"] == ["bar 1/3", "bar 2/3", "bar 3/3"]


async def test_exit_code_is_reported(tmp_path: Path) -> None:
    exit_, _ = await run("raise SystemExit(5)", tmp_path)
    assert exit_.returncode == 5


async def test_stall_timeout_stops_a_silent_child(tmp_path: Path) -> None:
    code = "import time; print('started', flush=True); time.sleep(60)"
    exit_, lines = await run(code, tmp_path, stall_timeout_s=0.5, grace_s=5)
    assert exit_.stopped == "stall" and exit_.returncode == -signal.SIGTERM
    assert ("stdout", "started") in lines


async def test_total_timeout_stops_a_chatty_child(tmp_path: Path) -> None:
    code = "import time\nwhile True:\n    print('tick', flush=True); time.sleep(0.05)"
    exit_, lines = await run(code, tmp_path, timeout_s=0.5, stall_timeout_s=10)
    assert exit_.stopped == "timeout" and len(lines) > 2


async def test_sigterm_ignored_gets_sigkill_after_grace(tmp_path: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    exit_, _ = await run(code, tmp_path, timeout_s=0.3, grace_s=0.3)
    assert exit_.stopped == "timeout" and exit_.returncode == -signal.SIGKILL


async def test_stop_event_stops_the_child(tmp_path: Path) -> None:
    stop = anyio.Event()
    pids: list[int] = []
    code = "import time; print('ready', flush=True); time.sleep(60)"

    def on_line(stream: str, line: str) -> None:
        if line == "ready":
            stop.set()

    with anyio.fail_after(30):
        exit_ = await runner.run_child(py(code), cwd=tmp_path, env=dict(os.environ),
                                       on_line=on_line, on_start=pids.append, stop=stop)
    assert exit_.stopped == "stop" and exit_.pid == pids[0]


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_grandchild_holding_the_pipe_is_killed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "DRAIN_S", 0.3)
    code = ("import subprocess, sys; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            "print(p.pid, flush=True)")
    exit_, lines = await run(code, tmp_path)
    assert exit_.returncode == 0
    grandchild = int(lines[0][1])
    with anyio.fail_after(10):
        while alive(grandchild):
            await anyio.sleep(0.02)


async def test_child_runs_in_its_own_process_group(tmp_path: Path) -> None:
    # The launcher leads the group (it kills the group if the supervisor dies); the
    # command is its child, in that group, away from the supervisor's.
    exit_, lines = await run(
        f"import os; print(os.getpgid(0) == os.getppid() != {os.getpgrp()}, flush=True)",
        tmp_path)
    assert ("stdout", "True") in lines


def test_a_sigkilled_launcher_takes_its_group_with_it(tmp_path: Path) -> None:
    """Ray SIGKILLs a dying worker's direct children: the launcher, which runs no handler
    then. Its watchdog kills the group (main.py and what it spawned)."""
    import subprocess
    import time

    marker = tmp_path / "pids"
    code = ("import os, subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); "
            f"open({str(marker)!r}, 'w').write(f'{{os.getpid()}} {{w.pid}}'); time.sleep(60)")
    launcher = subprocess.Popen(runner.launch_argv([sys.executable, "-c", code]),
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = [int(p) for p in marker.read_text().split()]
        assert all(alive(p) for p in pids)
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 5
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(alive(p) for p in pids)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except OSError:
            pass
