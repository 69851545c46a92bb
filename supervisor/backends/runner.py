"""The runner: start one child in its own session, stream its lines, stop it.

Lines are split on ``\\n`` and ``\\r`` (tqdm redraws with ``\\r``), capped in length and
handed to a callback. A child that runs past its total timeout, stays silent past the
stall timeout, or is told to stop gets SIGTERM on its process group, then SIGKILL after
the grace period; the runner always waits for the exit before it returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import anyio
from anyio.abc import ByteReceiveStream, Process

MAX_LINE_CHARS = 4096
READ_CHUNK_BYTES = 65536
# After the child exits, how long its pipes may stay open (held by grandchildren).
DRAIN_S = 5.0
# The watchdog wakes at least this often, and a wake-up this much later than asked means
# the supervisor itself was not running (SIGSTOP, Ctrl+Z, a suspended VM): that time is
# not the child's silence.
TICK_S = 1.0
LATE_S = 0.5

LineHandler = Callable[[str, str], None]  # (stream name, line)


@dataclass(frozen=True)
class ChildExit:
    pid: int
    returncode: int
    stopped: str | None  # "timeout", "stall" or "stop" when we ended it, else None


def _split_lines(buffer: bytearray) -> list[bytes]:
    """Pop complete lines off ``buffer``; an over-long partial line is cut at the cap."""
    lines = []
    while True:
        cut = min((i for i in (buffer.find(b"\n"), buffer.find(b"\r")) if i >= 0), default=-1)
        if cut < 0:
            if len(buffer) > MAX_LINE_CHARS:
                lines.append(bytes(buffer[:MAX_LINE_CHARS]))
                del buffer[:MAX_LINE_CHARS]
                continue
            return lines
        lines.append(bytes(buffer[:cut]))
        del buffer[: cut + 1]


split_lines = _split_lines  # the Slurm backend splits the files it follows the same way


async def _pump(stream: ByteReceiveStream, name: str, on_line: LineHandler,
                touched: Callable[[], None]) -> None:
    buffer = bytearray()
    async for chunk in stream:
        touched()
        buffer += chunk
        for raw in _split_lines(buffer):
            if raw:
                on_line(name, raw.decode("utf-8", "replace")[:MAX_LINE_CHARS])
    if buffer:
        on_line(name, buffer.decode("utf-8", "replace")[:MAX_LINE_CHARS])


def exited(pid: int) -> bool:
    """The child has exited and waits to be reaped (a zombie): nothing left to stop."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def stop_group(process: Process, grace_s: float,
                     kill: anyio.Event | None = None) -> None:
    """SIGTERM the child's group, SIGKILL it after ``grace_s`` or as soon as ``kill`` is
    set; wait for the exit."""
    with anyio.CancelScope(shield=True):
        _signal_group(process.pid, signal.SIGTERM)
        with anyio.move_on_after(grace_s):
            async with anyio.create_task_group() as tg:
                async def killed() -> None:
                    if kill is not None:
                        await kill.wait()
                        tg.cancel_scope.cancel()
                tg.start_soon(killed)
                await process.wait()
                tg.cancel_scope.cancel()
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGKILL)
        await process.wait()


LAUNCHER = str(Path(__file__).with_name("launch.py"))


def launch_argv(argv: Sequence[str]) -> list[str]:
    """Wrap ``argv`` so that its process group dies with the supervisor (see launch.py).

    launch.py needs only the standard library: run as a file with -S (no site
    packages to scan), it starts about 20 ms sooner than ``-m supervisor.backends.launch``.
    """
    return [sys.executable, "-S", LAUNCHER, str(os.getpid()), "--", *argv]


async def run_child(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    on_line: LineHandler,
    on_start: Callable[[int], None] = lambda pid: None,  # the group leader's pid
    stop: anyio.Event | None = None,
    kill: anyio.Event | None = None,
    timeout_s: float = 0.0,
    stall_timeout_s: float = 0.0,
    grace_s: float = 30.0,
) -> ChildExit:
    """Run one child to its end; timeouts of 0 mean no limit."""
    process = await anyio.open_process(
        launch_argv(argv), cwd=cwd, env=dict(env), start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    on_start(process.pid)
    watch = _Watch(process, stop, timeout_s, stall_timeout_s)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.pump, process.stdout, "stdout", on_line)
            tg.start_soon(watch.pump, process.stderr, "stderr", on_line)
            tg.start_soon(watch.wait_exit)
            tg.start_soon(watch.wait_stop)
            if await watch.until_overdue():
                await stop_group(process, grace_s, kill)
            # Pipes still open after the exit are held by grandchildren: kill them.
            with anyio.move_on_after(DRAIN_S):
                await watch.pumps_done.wait()
            if not watch.pumps_done.is_set():
                _signal_group(process.pid, signal.SIGKILL)
            tg.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            await stop_group(process, grace_s, kill)
        with anyio.CancelScope(shield=True):
            await process.aclose()
    assert process.returncode is not None
    return ChildExit(process.pid, process.returncode, watch.stopped)


class _Watch:
    """One child's watchdog: its output keeps it alive (``pump``), its exit or a stop
    wakes the watch; the total and stall limits are checked at least every TICK_S."""

    def __init__(self, process: Process, stop: anyio.Event | None, timeout_s: float,
                 stall_timeout_s: float) -> None:
        self.process, self.stop = process, stop
        self.timeout_s, self.stall_timeout_s = timeout_s, stall_timeout_s
        self.start = self.last_output = anyio.current_time()
        self.wake = anyio.Event()
        self.stopped: str | None = None  # "timeout", "stall" or "stop" when we end it
        self.pumps_left = 2
        self.pumps_done = anyio.Event()

    def touched(self) -> None:
        self.last_output = anyio.current_time()

    async def pump(self, stream: ByteReceiveStream | None, name: str,
                   on_line: LineHandler) -> None:
        assert stream is not None
        await _pump(stream, name, on_line, self.touched)
        self.pumps_left -= 1
        if not self.pumps_left:
            self.pumps_done.set()

    async def wait_exit(self) -> None:
        await self.process.wait()
        self.wake.set()

    async def wait_stop(self) -> None:
        if self.stop is not None:
            await self.stop.wait()
            self.wake.set()

    def overdue(self, now: float) -> tuple[str | None, float]:
        """Which limit is passed, and how long until the next one is."""
        if self.stop is not None and self.stop.is_set():
            return "stop", 0.0
        limits = []
        if self.timeout_s > 0:
            limits.append(("timeout", self.start + self.timeout_s))
        if self.stall_timeout_s > 0:
            limits.append(("stall", self.last_output + self.stall_timeout_s))
        for name, deadline in limits:
            if now >= deadline:
                return name, 0.0
        return None, min((d - now for _, d in limits), default=float("inf"))

    async def until_overdue(self) -> bool:
        """Wait for the exit (False) or a limit passed (True, ``stopped`` says which)."""
        due = None  # when the watch asked to wake up
        while self.process.returncode is None:
            now = anyio.current_time()
            if due is not None and now - due > LATE_S:
                # We were not running: neither reading the child's output nor seeing its
                # exit. Look again once both have had their turn.
                self.last_output += now - due
                due = None
                await anyio.sleep(0)
                continue
            stopped, wait_s = self.overdue(now)
            if stopped and (stopped == "stop" or not exited(self.process.pid)):
                self.stopped = stopped
                return True
            wait_s = TICK_S if stopped else min(wait_s, TICK_S)  # exited: reap it
            due = now + wait_s
            with anyio.move_on_after(wait_s):
                await self.wake.wait()
        return False
