"""Joining Slurm, before the run starts: every check that can fail does so here, with one
line that names Slurm, what failed and the fix (exit 2), and nothing written yet. Then,
inside the experiment's lock, ``resume`` finds what an earlier supervisor left in the
queue (``adopt``). Blocking: call it before the event loop starts."""

from __future__ import annotations

import os
import subprocess
from typing import Mapping

from supervisor.backends.slurm import allocation, submit
from supervisor.backends.slurm.adopt import sort_found
from supervisor.backends.slurm.backend import JOBS_NODE, SlurmBackend
from supervisor.backends.slurm.queue import JobInfo, ours, parse, squeue_argv
from supervisor.config.schema import Config
from supervisor.gpus.probe import GpuError

COMMANDS = ("sbatch", "srun", "squeue", "scontrol", "scancel")
CHECK_TIMEOUT_S = 20.0


def _slurm(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, input=input, capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise GpuError(f"Slurm: `{' '.join(argv[:2])}` did not answer within "
                       f"{CHECK_TIMEOUT_S:g} s: the controller is slow or away; try again, "
                       "or ask the cluster's admins (`scontrol ping`)") from None


def _said(done: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {done.returncode}"


def _check_conf() -> str:
    """SLURM_CONF, as far as it can be judged without Slurm: " (SLURM_CONF=...)" or ""."""
    conf = os.environ.get("SLURM_CONF")
    if conf is None:
        return ""
    if not conf.strip():  # Slurm's commands would look for it for a minute, then fail
        raise GpuError("Slurm: SLURM_CONF is set but empty: point it at the cluster's "
                       "slurm.conf, or unset it for Slurm's default")
    if not os.path.isfile(conf):  # likewise
        raise GpuError(f"Slurm: SLURM_CONF={conf} is not a file: point it at the cluster's "
                       "slurm.conf, or unset it for Slurm's default")
    return f" (SLURM_CONF={conf})"


def _config_complaint(done: subprocess.CompletedProcess) -> str | None:
    """What a Slurm command said when it could not read its configuration (its first and
    last lines: where the file is wrong, then Slurm's verdict), else None."""
    lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
    if done.returncode == 0 or not any("fatal:" in ln and "config" in ln for ln in lines):
        return None
    return lines[-1] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def check_reachable() -> None:
    import shutil
    for name in COMMANDS:
        if shutil.which(name) is None:
            raise GpuError(f'Slurm: `{name}` is not on PATH ([backend] kind = "slurm"): run the '
                           "supervisor where Slurm's commands are (a login node, or after "
                           "`module load slurm`)")
    where = _check_conf()
    try:
        done = _slurm(["scontrol", "ping"])
    except GpuError:
        raise GpuError(f"Slurm: the controller does not answer{where}: `scontrol ping` got no "
                       f"answer within {CHECK_TIMEOUT_S:g} s; check that slurmctld runs") from None
    complaint = _config_complaint(done)
    if complaint is not None:
        fix = "fix that file" if where else "set SLURM_CONF to the cluster's slurm.conf"
        raise GpuError(f"Slurm: cannot read its configuration{where}: `scontrol ping` says "
                       f"{complaint!r}; {fix}")
    if done.returncode != 0 or " is UP" not in done.stdout:
        said = " ".join(done.stdout.split("\n")[0].split()) or _said(done)
        raise GpuError(f"Slurm: the controller does not answer{where}: `scontrol ping` says "
                       f"{said!r}; check SLURM_CONF and that slurmctld runs")


def resolve_mode(mode: str, env: Mapping[str, str]) -> str:
    if mode == "auto":
        return "steps" if env.get("SLURM_JOB_ID") else "jobs"
    return mode


def _steps_places(config: Config) -> tuple[str, dict[str, int]]:
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise GpuError('Slurm: [backend] mode = "steps" runs rounds as steps of the '
                       "supervisor's own allocation, and SLURM_JOB_ID is not set: start the "
                       'supervisor inside `sbatch` or `salloc`, or use mode = "jobs"')
    done = _slurm(["scontrol", "show", "job", "-d", job_id])
    if done.returncode != 0:
        raise GpuError(f"Slurm: cannot read allocation {job_id} (`scontrol show job -d`: "
                       f"{_said(done)})")
    gres = config.backend.gres
    places = allocation.places(done.stdout, gres)
    if not places:
        name = allocation.per_step(gres)[0]
        raise GpuError(f"Slurm: allocation {job_id} holds no {name} for [backend] gres = "
                       f'"{gres}": submit it with --gres={name}:N per node (or '
                       "--gpus-per-node=N), one per round to run at once")
    return job_id, places


def _test_only(config: Config, tag: str) -> str:
    """Slurm's verdict on the round's job options, without submitting anything."""
    s = config.backend
    scratch = config.exp_dir / "slurm" / "test-only.out"
    argv = submit.sbatch_argv(s, f"{config.exp_name}__test", tag, scratch, scratch,
                              config.main.cwd, config.main.threads, test_only=True)
    done = _slurm(argv, input="#!/bin/sh\ntrue\n")
    if done.returncode != 0:
        raise GpuError("Slurm refused the rounds' job options ([backend] partition, account, "
                       f"qos, time_limit, gres, sbatch_args): {_said(done)}")
    return _said(done)


def open_backend(config: Config) -> SlurmBackend:
    """Check Slurm and the options, and find the places. Raises GpuError with the fix."""
    s = config.backend
    try:
        submit.time_limit_s(s.time_limit)
    except ValueError:
        raise GpuError(f'{config.path}: [backend] time_limit = "{s.time_limit}": expected '
                       'Slurm\'s format ("MINUTES", "HH:MM:SS", "D-HH:MM:SS"; "" for the '
                       "partition's default)") from None
    check_reachable()
    mode = resolve_mode(s.mode, os.environ)
    tag = submit.experiment_tag(config)
    if mode == "steps":
        job_id, places = _steps_places(config)
        return SlurmBackend(config, mode, tag, places, job_id=job_id)
    return SlurmBackend(config, mode, tag, {JOBS_NODE: s.max_jobs},
                        test_only=_test_only(config, tag))


def _leftover_steps(backend: SlurmBackend) -> list[JobInfo]:
    """Steps of this allocation named after this experiment's rounds: srun died with the
    supervisor that started them, so no one reads them any more."""
    done = _slurm(["squeue", "--steps", "--noheader", "--jobs", str(backend.allocation),
                   "--format=%i|%j"])
    prefix = f"{backend.config.exp_name}__"
    found = [line.split("|", 1) for line in done.stdout.splitlines() if "|" in line]
    return [JobInfo(i.strip(), "RUNNING", name=n.strip()) for i, n in found
            if n.strip().startswith(prefix)]


def resume(backend: SlurmBackend, running: Mapping[str, str | None], to_run: set[str]) -> None:
    """Inside the lock: adopt the jobs an earlier supervisor of this experiment left
    (jobs mode), cancel the rest (and, in steps mode, every step it left)."""
    if backend.mode == "steps":
        backend.adopt({}, _leftover_steps(backend))
        return
    done = _slurm(squeue_argv())
    if done.returncode != 0:
        raise GpuError(f"Slurm: cannot list this experiment's jobs (`squeue`: {_said(done)})")
    found, cancel = sort_found(ours(parse(done.stdout), backend.tag), running, to_run)
    if found:
        backend.log.info("jobs_found", jobs={n: j.job_id for n, j in sorted(found.items())})
    backend.adopt(found, cancel)
