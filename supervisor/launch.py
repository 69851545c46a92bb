"""Exec a round's command so that it dies with the supervisor.

``python -m supervisor.launch PARENT_PID -- argv...`` asks Linux for SIGKILL when the
parent dies (PR_SET_PDEATHSIG survives exec), then becomes the command. anyio's
open_process has no preexec hook, hence this tiny trampoline. Elsewhere it only execs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(137)


def main(args: list[str]) -> None:
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m supervisor.launch PARENT_PID -- COMMAND [ARGS...]")
    _die_with_parent(int(args[0]))
    argv = args[2:]
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"supervisor.launch: cannot run {argv[0]!r}: {exc}\n")
        os._exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
