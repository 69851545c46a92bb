"""How a round's child ended, in words: a limit the supervisor enforced, a signal (and
whether the kernel's OOM killer sent it), an exit code; and whether its output shows a
CUDA out-of-memory error, which is capacity, not the round's failure."""

from __future__ import annotations

import os
import re
import signal

from supervisor.backends import runner
from supervisor.config.schema import Config

# What recent torch prints when CUDA memory runs out (torch.OutOfMemoryError since 2.5,
# torch.cuda.OutOfMemoryError before, RuntimeError in old releases), and the same from
# the libraries it calls.
CUDA_OOM = re.compile(
    r"OutOfMemoryError|CUDA out of memory|CUDA error: out of memory|"
    r"CUBLAS_STATUS_ALLOC_FAILED|CUDNN_STATUS_ALLOC_FAILED|cudaErrorMemoryAllocation")


def cuda_out_of_memory(tail: list[str]) -> str | None:
    """The line of the output that says CUDA ran out of memory, if one does."""
    return next((line.strip()[:500] for line in reversed(tail) if CUDA_OOM.search(line)),
                None)


_ENDED = re.compile(r"^supervisor\.launch: pid (\d+) ended by signal 9$")
_OOM = re.compile(rb"(?:Killed process |oom-kill:.*,pid=)(\d+)\b")


KMSG = "/dev/kmsg"


def kernel_oom_kill(pid: int, kmsg: str | None = None) -> str | None:
    """The kernel log's line saying its OOM killer killed ``pid``, if it is there and
    readable (root, or dmesg_restrict = 0). /dev/kmsg gives one record per read."""
    try:
        fd = os.open(kmsg or KMSG, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        while True:
            try:
                chunk = os.read(fd, 8192)
            except BlockingIOError:
                return None
            except OSError:  # EPIPE: records overwritten while reading; go on
                continue
            if not chunk:
                return None
            for record in chunk.splitlines():
                m = _OOM.search(record)
                if m and int(m.group(1)) == pid:
                    return record.split(b";", 1)[-1].decode(errors="replace").strip()
    finally:
        os.close(fd)


def _sigkill_hint(tail: list[str], local: bool) -> str:
    pids = [int(m.group(1)) for line in tail if (m := _ENDED.match(line))]
    found = kernel_oom_kill(pids[-1]) if pids and local else None
    if found:
        return f" by the kernel's OOM killer (kernel log: {found[:160]})"
    return " (for example by the OOM killer: `dmesg` on its machine tells)"


def describe(exit_: runner.ChildExit, config: Config, tail: list[str] = (),  # type: ignore[assignment]
              local: bool = True) -> str:
    t = config.timeouts
    if exit_.stopped == "timeout":
        return f"timeout: ran past timeouts.round_timeout_s = {t.round_timeout_s:g}"
    if exit_.stopped == "stall":
        return f"stalled: no output for timeouts.stall_timeout_s = {t.stall_timeout_s:g}"
    if exit_.returncode < 0:
        name = signal.Signals(-exit_.returncode).name
        hint = _sigkill_hint(list(tail), local) if name == "SIGKILL" else ""
        return f"killed by signal {-exit_.returncode}, {name}{hint}"
    return f"exit code {exit_.returncode}"


