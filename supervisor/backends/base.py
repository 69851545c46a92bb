"""What a backend is: where a round's child runs. ``local`` (this machine), ``ray`` (a
node of a Ray cluster) and ``slurm`` (a Slurm job or job step) are the variants; the rest
of the supervisor (state machine, plan, admission, GPU health, merger) is the same for
all. A backend has

- the ``Probe`` interface over its GPU keys (``gpu_indices``, blocking ``read``),
- ``execute``: run one round's argv to its exit, its lines to ``on_line``, with its
  result file in the head's round folder when it returns (``paths.result``),
- ``refresh``: GPUs that joined or left since the last call (a cluster's nodes), and
- ``close``.

``execute`` raises ``RoundLost`` when the machine under the round went away (the round is
interrupted and runs again elsewhere, not counted as a failure) and ``RoundError`` when
it could not be run there (a failure with that reason).

A backend whose scheduler places rounds (Slurm) may also have: ``gpu_value`` (what
``{gpu}`` becomes in the argv: filled in where the round runs), ``adopted(name)`` (a round
already running there, found again after a restart: its folder is left alone),
``drain()`` (the first signal: cancel what has not started) and ``serve()`` (its own
background task, run beside the dispatcher). ``execute`` fills ``RoundJob.where`` (job
id, node, GPU) and calls ``on_start`` again once they are known.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import anyio

from supervisor.backends.job import RoundJob
from supervisor.backends.runner import ChildExit
from supervisor.config.schema import Config
from supervisor.core.slots import GpuKey
from supervisor.gpus.probe import Reading


class RoundLost(Exception):
    """The round's node or worker went away: run it again elsewhere."""


class RoundError(Exception):
    """The round could not run where it was sent (the reason is the message)."""


class Backend(Protocol):
    kind: str
    dynamic: bool  # GPUs may join and leave during a run

    def gpu_indices(self) -> list[Any]: ...

    def read(self, gpu: Any) -> Reading: ...

    async def execute(self, config: Config, job: RoundJob, argv: Sequence[str],
                      on_line: Callable[[str, str], None], on_start: Callable[[int], None],
                      stop: anyio.Event, kill: anyio.Event) -> ChildExit: ...

    async def refresh(self) -> tuple[list[GpuKey], list[tuple[GpuKey, str]]]: ...

    def close(self) -> None: ...
