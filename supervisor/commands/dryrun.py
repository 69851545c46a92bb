"""``--dry-run``: print the plan and the GPUs; start nothing, write nothing."""

from __future__ import annotations

import shlex
from typing import Any, Callable, TextIO

from supervisor.core import events as ev, plan, slots
from supervisor.storage import paths
from supervisor.config.schema import Config
from supervisor.gpus.pool import GpuPool
from supervisor.gpus.probe import Probe, ProbeError
from supervisor.gpus.choose import make_probe
from supervisor.storage.lock import live_holder
from supervisor.core.records import now
from supervisor.core.slots import GpuKey
from supervisor.core.state import State
from supervisor.run.resume import open_experiment
from supervisor.run.start import check_validator
from supervisor.backends.job import RoundJob, command
from supervisor.core.transitions import apply

FIRST_ROUNDS = 8


def _gpu_lines(pool: GpuPool, probe: Probe, config: Config
               ) -> tuple[list[str], list[GpuKey]]:
    lines, admitted = [], []
    for gpu in pool.gpus:
        try:
            free = probe.read(gpu).free_mib
        except ProbeError as exc:
            lines.append(f"  {slots.label(gpu)}: unusable ({exc})")
            continue
        ok = free is None or free >= config.gpu.min_free_mib
        shown = "unknown (no memory checks)" if free is None else f"{free} MiB free"
        lines.append(f"  {slots.label(gpu)}: {shown}, {'admitted' if ok else 'not admitted'}"
                     + ("" if ok else f" (min_free_mib = {config.gpu.min_free_mib})"))
        if ok:
            admitted.append(gpu)
    return lines, admitted


def dry_run(config: Config, probe: Probe | None = None, out: TextIO | None = None) -> int:
    """With ``[backend] kind = "ray"`` (and no ``probe`` given) it joins the cluster to list
    its nodes and GPUs, and leaves it again. Refuses what a run would refuse at start."""
    check_validator(config)
    if probe is None and config.backend.kind == "ray":
        holder = live_holder(config.exp_dir)
        if holder is not None:  # its workers hold the cluster's GPUs: say so, join nothing
            print(f"Dry run of {config.path}: nothing is started or written. Experiment "
                  f"{config.exp_name!r}: a supervisor (pid {holder}) is running it now on the "
                  f"Ray cluster at {config.backend.address!r}; `python -m supervisor status "
                  f"{config.path}` shows its progress.", file=out)
            return 0
        from supervisor.backends.ray.backend import open_backend
        backend = open_backend(config)
        try:
            return _dry_run(config, backend, None, out, backend.nodes())
        finally:
            backend.close()
    if probe is None and config.backend.kind == "slurm":
        from supervisor.backends.slurm.connect import open_backend as open_slurm
        slurm = open_slurm(config)  # checks Slurm and the options (sbatch --test-only)
        return _dry_run(config, slurm, None, out, None, _slurm_lines(config, slurm))
    warning = None
    if probe is None:
        probe, warning = make_probe(config.gpu.probe, config.gpus, config.main.env,
                                    config.main.cwd)
    return _dry_run(config, probe, warning, out, None)


def _slurm_lines(config: Config, backend: Any) -> list[str]:
    """What Slurm will be asked for, and what it said of it."""
    s = config.backend
    nodes = backend.nodes_of()
    where = (f"steps of allocation {backend.allocation}: " + ", ".join(
        f"{node} {len(keys)} GPU(s)" for node, keys in nodes.items())) \
        if backend.mode == "steps" else f"jobs, at most {s.max_jobs} submitted at once"
    lines = [f"Slurm: rounds as {where}; gres {s.gres or '(none)'}, partition "
             f"{s.partition or '(default)'}, account {s.account or '(default)'}, qos "
             f"{s.qos or '(default)'}, time limit {s.time_limit or '(the partition default)'}"
             + (f", sbatch_args {' '.join(s.sbatch_args)}" if s.sbatch_args else "")]
    if backend.test_only:
        lines.append(f"  sbatch --test-only: {backend.test_only}")
    lines.append("  {gpu} and CUDA_VISIBLE_DEVICES: the GPU Slurm gives each job, read inside it")
    return lines


def _dry_run(config: Config, probe: Probe, warning: str | None, out: TextIO | None,
             nodes: dict[str, list[GpuKey]] | None, slurm: list[str] | None = None) -> int:
    import sys

    out = out or sys.stdout
    write = lambda text="": print(text, file=out)  # noqa: E731
    pool = GpuPool(probe, config.gpus, config.gpu)
    exists = paths.manifest(config.exp_dir).exists()
    state = open_experiment(config)  # a copy in memory: nothing here is written
    apply(state, ev.ObjectsRegistered(config.object_codes, config.target_count_per_object))
    holder = live_holder(config.exp_dir)
    if holder is None:  # rounds "running" under a dead supervisor would run again
        apply(state, ev.SupervisorStarted(0, "", (), now(), gpus=tuple(pool.gpus)))
    write(f"Dry run of {config.path}: nothing is started or written.")
    write(f"Experiment {config.exp_name!r} in {config.exp_dir} "
          f"({'resuming' if exists else 'new'})"
          + (f"; a supervisor (pid {holder}) is running it now." if holder else "."))
    write(f"Objects ({len(config.object_codes)}), target {config.target_count_per_object} "
          f"grasps each, {config.round_batch_size} per round:")
    for code in config.object_codes:
        obj = state.objects[code]
        have = min(state.collected(code), obj.target)
        write(f"  [{obj.index}] {code}: {obj.status}, {have}/{obj.target} collected, "
              f"about {plan.rounds_to_go(state, code)} more round(s)")
    if config.validate.enabled:
        write(_validator(config, len(pool.gpus) if config.backend.kind == "local" else 0))
    gpu_lines, admitted = _gpu_lines(pool, probe, config)
    if nodes is not None:
        write(f"Ray cluster at {config.backend.address!r}: {len(nodes)} node(s), "
              f"{len(pool.gpus)} GPU(s)")
        for node, keys in nodes.items():
            write(f"  node {node}: GPUs {', '.join(str(slots.device(k)) for k in keys)}")
    if slurm is not None:
        for line in slurm:
            write(line)
        admitted = list(pool.gpus)
    else:
        write("GPUs:" + (f" ({warning})" if warning else ""))
        for line in gpu_lines:
            write(line)
    _first_rounds(config, state, admitted, write, slurm is not None)
    return 0


def _validator(config: Config, local_gpus: int) -> str:
    """[validate]: which validator, in how many processes (the count "auto" gives here)."""
    from supervisor.run.validation import workers

    v = config.validate
    what = (f"the command {' '.join(v.command)} in {v.cwd or config.main.cwd}" if v.command
            else "the built-in MuJoCo test (" + ", ".join(
                f"{k} {val:g}" for k, val in v.protocol().items()) + ")")
    count = workers(config, local_gpus)
    return (f"Validation: {what}; {count} worker process(es); the quota counts grasps "
            f"that pass")


def _first_rounds(config: Config, state: State, admitted: list[GpuKey],
                  write: Callable[[str], None], slurm: bool = False) -> None:
    """The rounds the run would start first, with their exact command lines."""
    if not admitted or plan.pick(state, admitted[0]) is None:
        why = "nothing left to run" if admitted else "no GPU admitted"
        write(f"First rounds: none ({why})")
        return
    write("First rounds:")
    for i in range(FIRST_ROUNDS):
        gpu = admitted[i % len(admitted)]
        pick = plan.pick(state, gpu)
        if pick is None:
            break
        apply(state, ev.RoundStarted(pick.object_code, pick.round_id, gpu, now(),
                                     slots.node(gpu)))
        rnd = state.round_of(pick.object_code, pick.round_id)
        job = RoundJob(pick.object_code, pick.round_id, rnd.name, rnd.seed, gpu, rnd.attempts)
        where = f" node={slots.node(gpu)}" if slots.node(gpu) else ""
        device = "{gpu}" if slurm else job.device
        write(f"  {rnd.name} seed={rnd.seed} " + (f"on {slots.label(gpu)}" if slurm else
                                                  f"gpu={job.device}{where}"))
        write(f"    cd {shlex.quote(str(config.main.cwd))} && "
              f"CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={device} "
              + " ".join(shlex.quote(part) for part in command(config, job,
                                                               device if slurm else None)))
