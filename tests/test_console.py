"""The console goes away under a long run: a terminal that hangs up (a dropped SSH
session) or a reader that closes the pipe (``| head``) costs the output, never the run."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from conftest import Layout, cli_env


def _wait(pid: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    raise AssertionError("the supervisor did not exit")


def test_a_terminal_that_hangs_up_drains_the_run_instead_of_crashing_it(
        layout: Layout) -> None:
    """Found by a new user: SIGHUP started the drain, then the live view's next write to
    the dead terminal raised EIO and ended the process with exit 1, killing the rounds."""
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=8,
                               num_iterations=60, env={"EMULATOR_ITER_S": "0.05"})
    pid, fd = pty.fork()
    if pid == 0:  # on the terminal: live view and console logs both there
        os.execve(sys.executable, [sys.executable, "-m", "supervisor", str(path)], cli_env())
    seen = b""
    deadline = time.monotonic() + 60
    while b"round_progress" not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 1.0)[0]:
            seen += os.read(fd, 65536)
    assert b"round_progress" in seen and b"t__obj_a__r0" in seen  # view and logs drawn
    os.close(fd)  # the terminal is gone: SIGHUP, then EIO on each write
    assert _wait(pid, 60) == 130
    manifest = layout.manifest()
    rounds = manifest["objects"]["obj_a"]["rounds"].values()
    assert {r["status"] for r in rounds} == {"merged"}  # finished and merged, not killed
    assert len(layout.final("obj_a")["energy"]) == 8


def test_logs_on_a_closed_pipe_keep_the_run_and_its_exit_code(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=8)
    proc = subprocess.run(["bash", "-c", f"{sys.executable} -m supervisor {path} | head -1;"
                           " echo ${PIPESTATUS[0]}"], env=cli_env(), capture_output=True,
                          text=True, timeout=120)
    first, code = proc.stdout.splitlines()
    assert first.startswith("{") and code == "0", proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert len(layout.final("obj_a")["energy"]) == 8


def _launchers(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if int(fields[1]) == parent and b"launch.py" in cmd:
            found.append(int(entry))
    return found


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_supervisor_stopped_past_the_stall_timeout_merges_rounds_that_finished(
        layout: Layout) -> None:
    """Found by a new user: after Ctrl+Z (SIGSTOP) longer than stall_timeout_s, rounds
    that had exited 0 with a valid result were failed as "stalled" and run again."""
    import json
    import signal

    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=8,
                               num_iterations=60, env={"EMULATOR_ITER_S": "0.05"},
                               timeouts={"stall_timeout_s": 2.0, "grace_s": 2.0})
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", str(path)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(json.loads(line))
        if lines[-1]["event"] == "round_progress":
            break
    launchers = _launchers(proc.pid)
    proc.send_signal(signal.SIGSTOP)
    try:
        # The rounds run on (own sessions) and end while nobody reads them: 3 s of output
        # the supervisor sees only when it runs again, past its 2 s stall timeout.
        deadline = time.monotonic() + 30
        while not all(_zombie(pid) for pid in launchers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert launchers and all(_zombie(pid) for pid in launchers)
    finally:
        proc.send_signal(signal.SIGCONT)
    rest, _ = proc.communicate(timeout=60)
    lines += [json.loads(line) for line in rest.splitlines()]
    assert proc.returncode == 0
    assert not [e for e in lines if e["event"] == "round_failed"]
    assert len([e for e in lines if e["event"] == "round_started"]) == 2
    assert len(layout.final("obj_a")["energy"]) == 8


def test_a_closed_stdout_or_stderr_is_no_reason_to_fail(layout: Layout) -> None:
    """Found by a tester: `>&-` crashed at start-up (sys.stdout is None then)."""
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    for close in (">&-", "2>&-"):
        proc = subprocess.run(["bash", "-c", f"{sys.executable} -m supervisor {path} {close}"],
                              env=cli_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (close, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stdout + proc.stderr
    assert len(layout.final("obj_a")["energy"]) == 4
