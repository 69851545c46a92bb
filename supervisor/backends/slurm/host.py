"""What a round's runner (``jobs``, ``steps``) needs of the backend that runs it: the
experiment's tag, the queue, node health and the run's bookkeeping of its jobs. A
Protocol, so that the runners never import the backend (which imports them)."""

from __future__ import annotations

from typing import Protocol

from supervisor.backends.job import RoundJob
from supervisor.backends.slurm.nodes import NodeHealth
from supervisor.backends.slurm.queue import JobInfo, Queue
from supervisor.backends.slurm.states import End


class Host(Protocol):
    tag: str
    queue: Queue
    nodes: NodeHealth
    draining: bool
    ours: set[str]  # job ids this supervisor cancelled
    live: set[str]  # job ids submitted or adopted and not ended
    steps: dict[str, object]  # round name -> its StepRound, while it runs

    def take_adopted(self, name: str) -> JobInfo | None: ...

    async def cancel(self, job_ids: list[str], *options: str) -> None: ...

    async def job_record(self, job_id: str) -> dict[str, str] | None: ...

    def judge_node(self, job: RoundJob, end: End) -> None: ...
