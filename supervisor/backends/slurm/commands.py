"""Slurm's own commands (sbatch, srun, squeue, scontrol, scancel), run as they would be
from a shell: the user's environment, SLURM_CONF and defaults honoured. No library: they
work on every Slurm version, with or without accounting (slurmdbd).

``run`` is one call under a timeout; ``call`` retries, with backoff, while the
controller does not answer (a restart, a failover), and says so in the logs, so that
rounds already running are never abandoned for a moment of silence.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Sequence

import anyio

from supervisor.logs import get_logger

COMMAND_TIMEOUT_S = 30.0
BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
# What the commands print when the controller is away rather than the request wrong.
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out", "Connection refused",
               "Zero Bytes were transmitted", "slurm_load_jobs error: Unable",
               "Transport endpoint", "No route to host", "Communication connection failure",
               "Slurm backup controller in standby", "Connection timed out", "timed out")


class SlurmError(RuntimeError):
    """A Slurm command failed (the message is its first line of complaint)."""

    def __init__(self, argv: Sequence[str], message: str, unreachable: bool = False) -> None:
        super().__init__(f"`{' '.join(argv[:2])}`: {message}")
        self.unreachable = unreachable


@dataclass(frozen=True)
class Done:
    stdout: str
    stderr: str


def first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def unreachable(text: str) -> bool:
    return any(marker.lower() in text.lower() for marker in UNREACHABLE)


def missing(name: str = "sbatch") -> bool:
    return shutil.which(name) is None


async def run(argv: Sequence[str], input: str | None = None,
              timeout_s: float = COMMAND_TIMEOUT_S, check: bool = True) -> Done:
    """Run once; raises SlurmError (``unreachable`` set when the controller is away)."""
    try:
        with anyio.fail_after(timeout_s):
            done = await anyio.run_process(
                list(argv), input=None if input is None else input.encode(), check=False,
                stdin=None if input is not None else subprocess.DEVNULL)
    except TimeoutError:
        raise SlurmError(argv, f"no answer within {timeout_s:g} s", unreachable=True) from None
    except OSError as exc:
        raise SlurmError(argv, f"cannot run it ({exc})") from None
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    if check and done.returncode != 0:
        text = first_line(err) or first_line(out) or f"exit status {done.returncode}"
        raise SlurmError(argv, text, unreachable=unreachable(err + out))
    return Done(out, err)


async def call(argv: Sequence[str], input: str | None = None,
               timeout_s: float = COMMAND_TIMEOUT_S, retry: bool = True) -> Done:
    """Run, retrying with backoff (logged as ``slurm_retry``) while the controller is
    unreachable; any other error is raised at once. Retries until cancelled."""
    attempt = 0
    while True:
        try:
            return await run(argv, input, timeout_s)
        except SlurmError as exc:
            if not (retry and exc.unreachable):
                raise
            wait_s = BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]
            attempt += 1
            get_logger().warning("slurm_retry", command=argv[0], attempt=attempt,
                                 wait_s=wait_s, error=str(exc))
            await anyio.sleep(wait_s)
