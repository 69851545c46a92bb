"""What ``status`` shows of an experiment's rounds in Slurm: its jobs (by tag) and steps
(by round name) still in the queue, pending ones with Slurm's reason (Priority,
Resources, QOSMaxJobsPerUserLimit...). Two ``squeue`` calls, from wherever status runs."""

from __future__ import annotations

import subprocess
from collections import Counter
from typing import Any

from supervisor.backends.slurm.queue import ours, parse, squeue_argv
from supervisor.backends.slurm.states import is_live
from supervisor.backends.slurm.submit import experiment_tag
from supervisor.config.schema import Config

TIMEOUT_S = 20.0


def _squeue(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise OSError(lines[-1] if lines else f"exit status {done.returncode}")
    return done.stdout


def overview(config: Config) -> dict[str, Any]:
    """{"jobs": [{round, job_id, state, reason, node}], "error": None or why not read}."""
    try:
        jobs = [j for j in ours(parse(_squeue(squeue_argv())), experiment_tag(config))
                if is_live(j.state)]
        steps = _squeue(["squeue", "--me", "--steps", "--noheader", "--format=%i|%j|%N"])
    except (OSError, subprocess.SubprocessError) as exc:
        said = str(exc)  # squeue's own complaints start with "squeue: "
        return {"jobs": [], "error": said if said.startswith("squeue:") else f"squeue: {said}"}
    rows = [{"round": j.name, "job_id": j.job_id, "state": j.state,
             "reason": None if j.reason in ("", "None") else j.reason, "node": j.nodes or None}
            for j in jobs]
    prefix = f"{config.exp_name}__"
    for line in steps.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[1].startswith(prefix):
            rows.append({"round": parts[1], "job_id": parts[0], "state": "RUNNING",
                         "reason": None, "node": parts[2] or None})
    return {"jobs": sorted(rows, key=lambda r: r["round"]), "error": None}


def render(view: dict[str, Any]) -> list[str]:
    if view.get("error"):
        return [f"slurm: queue not read ({view['error']})"]
    jobs = view["jobs"]
    states = Counter(j["state"].lower() for j in jobs)
    pending = [j for j in jobs if j["state"] == "PENDING"]
    reasons = Counter(j["reason"] or "unknown" for j in pending)
    head = "slurm: " + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or
                        "nothing in the queue")
    if reasons:
        head += " (" + ", ".join(f"{r} x{n}" for r, n in reasons.most_common()) + ")"
    return [head] + [f"  {j['round']} job {j['job_id']} pending: {j['reason'] or 'unknown'}"
                     for j in pending]
