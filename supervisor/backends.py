"""Where a round's child runs: on this machine (``LocalBackend``) or on a node of a Ray
cluster (``supervisor.raybackend``). The rest of the supervisor (state machine, plan,
admission, GPU health, merger) is the same for both; a backend only has

- the ``Probe`` interface over its GPU keys (``gpu_indices``, blocking ``read``),
- ``execute``: run one round's argv to its exit, its lines to ``on_line``, with its
  result file in the head's round folder when it returns (``paths.result``),
- ``refresh``: GPUs that joined or left since the last call (a cluster's nodes), and
- ``close``.

``execute`` raises ``RoundLost`` when the machine under the round went away (the round is
interrupted and runs again elsewhere, not counted as a failure) and ``RoundError`` when
it could not be run there (a failure with that reason).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import anyio

from supervisor import runner
from supervisor.config import Config
from supervisor.gpus import Probe, Reading
from supervisor.job import RoundJob, child_env
from supervisor.slots import GpuKey


class RoundLost(Exception):
    """The round's node or worker went away: run it again elsewhere."""


class RoundError(Exception):
    """The round could not run where it was sent (the reason is the message)."""


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
