"""Run a round's command so that its whole process group dies with the supervisor.

``python -S supervisor/backends/launch.py PARENT_PID -- argv...`` is started as the leader of a new
session and process group. It asks Linux for a signal when the supervisor dies
(PR_SET_PDEATHSIG), forks the command, and stays as its parent: when the supervisor
dies it SIGKILLs the whole group, so a worker that main.py spawned (a data loader, a
renderer) dies too, not only main.py. SIGTERM from the supervisor reaches every member
of the group; the launcher itself ignores it and exits the way the command exited.
anyio's open_process has no preexec hook, hence this small parent.

The launcher can itself be SIGKILLed while its parent lives on: Ray kills the direct
children of a worker that exits (a head killed with kill -9 ends its workers so), and a
SIGKILL runs no handler. So the launcher also forks a watchdog into the group, which
asks for a signal when the launcher dies and then SIGKILLs the whole group; the launcher
ends the watchdog itself before exiting normally.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_GONE = signal.SIGUSR1


LEADER = os.getpid()  # the launcher (the watchdog, forked, keeps the launcher's value)


def _kill_group(*_: object) -> None:
    # Only the launcher's own group: started by hand (not as a session leader) it must
    # not take down its caller's group.
    if os.getpgrp() == LEADER:
        os.killpg(0, signal.SIGKILL)
    os._exit(137)


def _die_with_parent(parent_pid: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    signal.signal(PARENT_GONE, _kill_group)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, PARENT_GONE, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        _kill_group()


def _watchdog(launcher: int) -> int:
    """Fork the group's watchdog (see above); returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # a round's stop is the command's business
    _die_with_parent(launcher)
    while True:
        signal.pause()


def _exit_like(status: int, child: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # Which pid died, for the supervisor to look up in the kernel log (an OOM kill
        # names the pid there, and main.py's is not the launcher's).
        sys.stderr.write(f"supervisor.launch: pid {child} ended by signal {sig}\n")
        sys.stderr.flush()
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(status))


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -S launch.py PARENT_PID -- COMMAND [ARGS...] "
                 "(supervisor/backends/launch.py)")
    _die_with_parent(int(args[0]))
    argv = args[2:]
    watchdog = _watchdog(os.getpid()) if sys.platform.startswith("linux") else None
    child = os.fork()
    if child == 0:
        for sig in (PARENT_GONE, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            sys.stderr.write(f"supervisor.launch: cannot run {argv[0]!r}: {exc}\n")
            os._exit(127)
    # The group gets SIGTERM to stop a round: the command decides, the launcher waits.
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: None)
    _, status = os.waitpid(child, 0)
    if watchdog is not None:  # a normal end: the group's other members are not killed
        os.kill(watchdog, signal.SIGKILL)
        os.waitpid(watchdog, 0)
    _exit_like(status, child)


if __name__ == "__main__":
    main(sys.argv[1:])
