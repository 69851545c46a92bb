"""What is handed to Slurm for one round, pure: the experiment's tag (``--comment``), the
``sbatch`` command line and batch script of a job, the ``srun`` command line of a step,
and Slurm's time-limit format read as seconds. ``{gpu}`` stays in the argv as
``GPU_PLACEHOLDER``: only the job knows the GPU Slurm gave it (``task`` fills it in)."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Mapping, Sequence

from supervisor.config.schema import BackendSettings, Config

GPU_PLACEHOLDER = "{gpu}"
TASK = str(Path(__file__).with_name("task.py"))
TAG_PREFIX = "supervisor"
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
UNLIMITED = ("", "unlimited", "infinite")


def experiment_tag(config: Config) -> str:
    """``supervisor:EXP:HASH``: the experiment's folder and identity (what decides its
    grasps), so that a supervisor started again finds its own jobs and no one else's, and
    never adopts a job of an earlier experiment that had the same name."""
    key = json.dumps([str(config.exp_dir), config.identity()], sort_keys=True, default=str)
    return f"{TAG_PREFIX}:{config.exp_name}:{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def time_limit_s(text: str) -> float | None:
    """Slurm's time format (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``) in seconds; None for no limit. Raises ValueError."""
    text = text.strip()
    if text.lower() in UNLIMITED:
        return None
    m = _TIME.match(text)
    if not m:
        raise ValueError(text)
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is None:  # MM, MM:SS, HH:MM:SS
        weights = {1: (60,), 2: (60, 1), 3: (3600, 60, 1)}[len(parts)]
        return float(sum(p * w for p, w in zip(parts, weights)))
    weights = (3600, 60, 1)[:len(parts)]  # D-HH, D-HH:MM, D-HH:MM:SS
    return float(int(days) * 86400 + sum(p * w for p, w in zip(parts, weights)))


def _options(s: BackendSettings, threads: int) -> list[str]:
    """What a job and a step both ask for: one task, its CPUs, one GPU (``gres``)."""
    options = ["--ntasks=1", f"--cpus-per-task={threads}"]
    if s.gres:
        options.append(f"--gres={s.gres}")
    if s.time_limit.strip().lower() not in UNLIMITED:
        options.append(f"--time={s.time_limit.strip()}")
    return options


def sbatch_argv(s: BackendSettings, name: str, tag: str, out: Path, err: Path, cwd: Path,
                threads: int, exclude: Sequence[str] = (), test_only: bool = False
                ) -> list[str]:
    """One round as a batch job. ``sbatch_args`` come last: they win over ours.
    ``--no-requeue``: a job Slurm ends is the supervisor's to run again (same name and
    seed), not Slurm's (which would hold it minutes first)."""
    argv = ["sbatch", "--test-only" if test_only else "--parsable", f"--job-name={name}",
            f"--comment={tag}", f"--output={out}", f"--error={err}", f"--chdir={cwd}",
            "--no-requeue", *_options(s, threads)]
    for key in ("partition", "account", "qos"):
        value = getattr(s, key)
        if value:
            argv.append(f"--{key}={value}")
    if exclude:
        argv.append(f"--exclude={','.join(sorted(exclude))}")
    return argv + list(s.sbatch_args)


def task_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The round's command run by ``task`` inside the job or step, with the round's
    environment given explicitly (whatever ``--export`` the user's Slurm defaults say)."""
    pairs = [f"--env={k}={v}" for k, v in sorted(env.items())]
    return [sys.executable, "-S", TASK, *pairs, "--", *argv]


def batch_script(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The batch script (sbatch reads it on stdin): exec the task, nothing else."""
    return "#!/bin/sh\nexec " + " ".join(shlex.quote(a) for a in task_argv(argv, env)) + "\n"


def srun_argv(s: BackendSettings, name: str, node: str, cwd: Path, threads: int) -> list[str]:
    """One round as a step of this allocation, on ``node``. ``--exact``: only what the
    step asks for, so steps run side by side; ``--unbuffered``: tqdm's ``\\r`` redraws
    come through as they are printed, not at the next newline."""
    return ["srun", "--exact", "--unbuffered", "--nodes=1", f"--nodelist={node}",
            f"--job-name={name}", f"--chdir={cwd}", *_options(s, threads)]
