"""One round's job: which round, on which GPU, and the exact command line and
environment main.py gets (the GPU trap handled). Pure: --dry-run prints these without
starting anything."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from supervisor.core import slots
from supervisor.config.schema import Config
from supervisor.core.slots import GpuKey


ROUND_ENV = "SUPERVISOR_ROUND"


@dataclass(frozen=True)
class RoundJob:
    object_code: str
    round_id: int
    name: str
    seed: int
    gpu: GpuKey  # an int on one server, "HOST/NODE/gpuN" on a cluster (supervisor.core.slots)
    attempt: int
    # Where a scheduler put it (Slurm): job_id, then node and gpu once it runs; these
    # fields go into every event of the round (the backend fills them in).
    where: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def device(self) -> int:
        """The physical GPU id on the round's machine: ``{gpu}`` and CUDA_VISIBLE_DEVICES."""
        return slots.device(self.gpu)

    def fields(self) -> dict[str, Any]:
        return {"round": self.name, "object_code": self.object_code, **slots.fields(self.gpu),
                **self.placed()}

    def placed(self) -> dict[str, Any]:
        """What a scheduler said of the round so far (``where`` without the queue note)."""
        return {k: v for k, v in self.where.items() if k in ("job_id", "node", "gpu")}


def command(config: Config, job: RoundJob, gpu: Any = None) -> list[str]:
    """``gpu``: what ``{gpu}`` becomes; by default the round's physical GPU id (a backend
    whose rounds learn their GPU only where they run passes the placeholder on)."""
    values = {
        "name": job.name, "object_code": job.object_code,
        "batch_size": config.round_batch_size, "num_iterations": config.num_iterations,
        "seed": job.seed, "gpu": job.device if gpu is None else gpu, "python": sys.executable,
    }
    if any("{upstream_launcher}" in part for part in config.main.command):
        from supervisor.backends.upstream_launcher import LAUNCHER_PATH
        values["upstream_launcher"] = str(LAUNCHER_PATH)
    return [part.format(**values) for part in config.main.command]


def round_env(config: Config) -> dict[str, str]:
    """What a round's environment adds to its machine's: [main] env, threads, unbuffered."""
    threads = str(config.main.threads)
    return {**config.main.env, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1"}


def child_env(config: Config, gpu: int, name: str = "") -> dict[str, str]:
    """The GPU trap: main.py sets CUDA_VISIBLE_DEVICES from --gpu, so both carry the same
    physical id, numbered in PCI bus order like NVML's indices. ROUND_ENV names the round
    in every process of its group (resume tells its orphans by it)."""
    return {**os.environ, **round_env(config), ROUND_ENV: name,
            "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(gpu)}
