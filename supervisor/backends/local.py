"""The local backend: rounds as children of this process, on this machine's GPUs
(``supervisor.backends.base`` says what a backend does)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import anyio

from supervisor.backends import runner
from supervisor.backends.job import RoundJob, child_env
from supervisor.config.schema import Config
from supervisor.core.slots import GpuKey
from supervisor.gpus.probe import Probe, Reading


class LocalBackend:
    """Rounds as children of this process, on this machine's GPUs."""

    kind = "local"
    dynamic = False  # the set of GPUs never changes during a run

    def __init__(self, probe: Probe | None = None) -> None:
        self.probe = probe  # for its Probe interface; execute needs none

    def gpu_indices(self) -> list[Any]:
        return self.probe.gpu_indices()

    def read(self, gpu: Any) -> Reading:
        return self.probe.read(gpu)

    async def execute(self, config: Config, job: RoundJob, argv: Sequence[str],
                      on_line: Callable[[str, str], None], on_start: Callable[[int], None],
                      stop: anyio.Event, kill: anyio.Event) -> runner.ChildExit:
        t = config.timeouts
        return await runner.run_child(
            argv, cwd=config.main.cwd, env=child_env(config, job.device, job.name),
            on_line=on_line,
            on_start=on_start, stop=stop, kill=kill, timeout_s=t.round_timeout_s,
            stall_timeout_s=t.stall_timeout_s, grace_s=t.grace_s)

    async def refresh(self) -> tuple[list[GpuKey], list[tuple[GpuKey, str]]]:
        return [], []

    def close(self) -> None:
        pass
