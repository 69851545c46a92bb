"""``--dry-run``: print the plan and the GPUs; start nothing, write nothing."""

from __future__ import annotations

import copy
import math
import shlex
from typing import TextIO

from supervisor import manifest as mf, plan
from supervisor.config import Config
from supervisor.gpus import GpuPool, Probe, ProbeError, make_probe
from supervisor.lock import live_holder
from supervisor.resume import manifest_path, open_manifest, register_objects
from supervisor.rounds import RoundJob, command

FIRST_ROUNDS = 8


def _gpu_lines(config: Config, probe: Probe) -> tuple[list[str], list[int]]:
    lines, admitted = [], []
    pool = GpuPool(probe, config.gpus, config.gpu)
    for gpu in pool.gpus:
        try:
            free = probe.read(gpu).free_mib
        except ProbeError as exc:
            lines.append(f"  GPU {gpu}: unusable ({exc})")
            continue
        ok = free is None or free >= config.gpu.min_free_mib
        shown = "unknown (no memory checks)" if free is None else f"{free} MiB free"
        lines.append(f"  GPU {gpu}: {shown}, {'admitted' if ok else 'not admitted'}"
                     + ("" if ok else f" (min_free_mib = {config.gpu.min_free_mib})"))
        if ok:
            admitted.append(gpu)
    return lines, admitted


def dry_run(config: Config, probe: Probe | None = None, out: TextIO | None = None) -> int:
    import sys

    out = out or sys.stdout
    if probe is None:
        probe, warning = make_probe(config.gpu.probe, config.gpus)
    else:
        warning = None
    manifest = open_manifest(config)
    register_objects(config, manifest)
    exists = manifest_path(config).exists()
    holder = live_holder(config.exp_dir)
    if holder is None:  # rounds "running" under a dead supervisor would run again
        for obj in manifest.objects.values():
            for rnd in obj.rounds.values():
                if rnd.status == mf.RUNNING:
                    rnd.status = mf.INTERRUPTED
    write = lambda text="": print(text, file=out)  # noqa: E731
    write(f"Dry run of {config.path}: nothing is started or written.")
    write(f"Experiment {config.exp_name!r} in {config.exp_dir} "
          f"({'resuming' if exists else 'new'})"
          + (f"; a supervisor (pid {holder}) is running it now." if holder else "."))
    write(f"Objects ({len(config.object_codes)}), target {config.target_count_per_object} "
          f"grasps each, {config.round_batch_size} per round:")
    objects = [manifest.objects[code] for code in config.object_codes]
    for obj in objects:
        remaining = max(0, obj.target - plan.collected(obj))
        rounds = math.ceil(remaining / plan.expected_yield(obj, config.round_batch_size))
        write(f"  [{obj.index}] {obj.code}: {obj.status}, {plan.collected(obj)}/{obj.target}"
              f" collected, about {rounds} more round(s)")
    gpu_lines, admitted = _gpu_lines(config, probe)
    write("GPUs:" + (f" ({warning})" if warning else ""))
    for line in gpu_lines:
        write(line)
    write("First rounds:")
    shadow = copy.deepcopy(objects)
    for i in range(FIRST_ROUNDS):
        pick = plan.pick_next(shadow, config.round_batch_size, config.max_rounds)
        if pick is None:
            break
        obj = next(o for o in shadow if o.code == pick.object_code)
        name = plan.round_name(config.exp_name, obj.code, pick.round_id)
        seed = plan.round_seed(config.seed_base, obj.index, pick.round_id)
        obj.rounds[pick.round_id] = mf.RoundRecord(pick.round_id, name, seed, mf.RUNNING)
        gpu = admitted[i % len(admitted)] if admitted else "?"
        job = RoundJob(obj.code, pick.round_id, name, seed, gpu, 1)  # type: ignore[arg-type]
        write(f"  {name} seed={seed} gpu={gpu}")
        write(f"    cd {shlex.quote(str(config.main.cwd))} && "
              f"CUDA_DEVICE_ORDER=PCI_BUS_ID CUDA_VISIBLE_DEVICES={gpu} "
              + " ".join(shlex.quote(part) for part in command(config, job)))
    return 0
