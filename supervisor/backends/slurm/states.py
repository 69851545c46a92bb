"""How a Slurm job or step ended, as an outcome of the round, pure.

- ``ok``: it completed (the result is read and merged as on one server);
- ``failed``: an exit code, a signal, host memory: a failed attempt, charged;
- ``time_limit``: Slurm killed it at its time limit: charged, the reason names
  ``time_limit`` and how long the round had run;
- ``capacity``: cancelled by someone else, preempted, its node failed or did not boot:
  run again with the same name and seed, not charged (as a CUDA out-of-memory);
- ``stopped``: cancelled by this supervisor (a drain, a stop, an object done).

Also the lines ``task`` prints (``placed``, ``exit``) and those ``srun`` and
``slurmstepd`` print when a step is cancelled or its node fails.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Any

from supervisor.backends.slurm.task import PREFIX

OK, FAILED, TIME_LIMIT, CAPACITY, STOPPED = "ok", "failed", "time_limit", "capacity", "stopped"
LIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED",
                  "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING",
                  "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
STARTED = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "SIGNALING", "STAGE_OUT",
                     "STOPPED"})
CAPACITY_STATES = {"NODE_FAIL": "its node failed", "PREEMPTED": "preempted",
                   "BOOT_FAIL": "its node did not boot", "REVOKED": "revoked (federation)"}


@dataclass(frozen=True)
class End:
    kind: str
    reason: str
    exit_code: int | None = None  # as the local backend reports it: -N for signal N


def is_live(state: str) -> bool:
    """Pending or running: not ended yet (``CANCELLED by 0`` reads as CANCELLED)."""
    return state.split()[0] in LIVE if state else True


def has_started(state: str) -> bool:
    return bool(state) and state.split()[0] in STARTED


def wait_status(raw: int | None) -> int | None:
    """squeue's ``exit_code`` is a wait status (768: exit 3; 15: signal 15): as a
    return code, -N for signal N."""
    if raw is None:
        return None
    return -(raw & 0x7F) if raw & 0x7F else (raw >> 8) & 0xFF


def scontrol_exit(text: str | None) -> int | None:
    """scontrol's ``ExitCode=3:0`` (code:signal) as a return code."""
    if not text or ":" not in text:
        return None
    code, _, sig = text.partition(":")
    try:
        return -int(sig) if int(sig) else int(code)
    except ValueError:
        return None


def _code_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by signal {-code}, {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def job_end(state: str, code: int | None, reason: str, ours: bool, ran_s: float,
            time_limit: str) -> End:
    """A job's end from its state (squeue or scontrol), its return code (the task's own
    ``exit`` line when there is one, else Slurm's), Slurm's reason, whether this
    supervisor cancelled it, and how long it ran."""
    word = state.split()[0] if state else "UNKNOWN"
    if word == "COMPLETED" and (code in (0, None)):
        return End(OK, "completed", 0)
    if word in ("TIMEOUT", "DEADLINE"):
        limit = f"[backend] time_limit = {time_limit!r}" if time_limit else \
            "the partition's time limit ([backend] time_limit unset)"
        return End(TIME_LIMIT, f"time_limit: Slurm ended the job at {limit} after "
                               f"{duration(ran_s)} of running (the round's measured length "
                               f"so far); raise time_limit above the longest round", code)
    if word == "CANCELLED":
        if ours:
            return End(STOPPED, "cancelled by the supervisor", code)
        return End(CAPACITY, "capacity: cancelled by someone else (scancel); runs again")
    if word in CAPACITY_STATES:
        why = CAPACITY_STATES[word] + (f" ({reason})" if reason and reason != "None" else "")
        return End(CAPACITY, f"capacity: {why}; runs again")
    if word == "OUT_OF_MEMORY":
        return End(FAILED, "out of host memory: Slurm killed the job at its memory limit "
                           "(ask for more with [backend] sbatch_args, e.g. \"--mem=32G\")", code)
    text = _code_text(code)
    where = f" ({reason})" if reason and reason not in ("None", "NonZeroExitCode") else ""
    return End(FAILED, f"{text}{where}" if word in ("FAILED", "COMPLETED") else
               f"{text}: the job ended {word}{where}", code)


# -- lines -----------------------------------------------------------------------------
_PLACED = re.compile(re.escape(PREFIX) + r" placed node=(\S+) gpu=(\S+) job=(\S+) step=(\S+)"
                     r"(?: pid=(\d+))?$")
_EXIT = re.compile(re.escape(PREFIX) + r" exit=(-?\d+)$")
_STEP = re.compile(r"\*\*\* (?:STEP|JOB) \S+ ON (\S+) CANCELLED AT \S+(?: DUE TO ([A-Z ]+?))?"
                   r"(?:,.*)? \*\*\*")
_NODE_FAILURE = re.compile(r"srun: error: Node failure on (\S+)")


def placed(line: str) -> dict[str, Any] | None:
    """``task``'s ``placed`` line: node, gpu (as the job sees it), job id, step, pid."""
    m = _PLACED.search(line)
    if not m:
        return None
    node, gpu, job, step, pid = m.groups()
    return {"node": node, "gpu": int(gpu) if gpu.isdigit() else gpu, "job_id": job if step == "batch" else f"{job}.{step}",
            "pid": pid or "0"}


def exited(line: str) -> int | None:
    """``task``'s ``exit`` line: the command's return code."""
    m = _EXIT.search(line)
    return int(m.group(1)) if m else None


def step_end(lines: list[str], code: int | None, ours: bool, ran_s: float,
             time_limit: str) -> End:
    """A step's end from what srun and slurmstepd printed (srun exits 0 after a node
    failure) and the command's return code."""
    for line in reversed(lines):
        m = _NODE_FAILURE.search(line)
        if m:
            return End(CAPACITY, f"capacity: node failure on {m.group(1)}; runs again")
        m = _STEP.search(line)
        if not m:
            continue
        due = (m.group(2) or "").strip()
        if due == "TIME LIMIT":
            return job_end("TIMEOUT", code, "TimeLimit", ours, ran_s, time_limit)
        if due == "NODE FAILURE":
            return End(CAPACITY, f"capacity: node failure on {m.group(1)}; runs again")
        if due == "PREEMPTION":
            return End(CAPACITY, "capacity: preempted; runs again")
        return job_end("CANCELLED", code, "", ours, ran_s, time_limit)
    if code == 0:
        return End(OK, "completed", 0)
    return End(FAILED, _code_text(code), code)
