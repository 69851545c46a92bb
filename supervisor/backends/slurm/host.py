"""What a round's runner (``jobs``, ``steps``) is given: ``Host``, what it needs of the
backend that runs it (the experiment's tag, the queue, node health and the run's
bookkeeping of its jobs; a Protocol, so that the runners never import the backend, which
imports them), and ``RoundCall``, the round as ``execute`` hands it on, with what the
round's task has said of it so far (``task.py``'s ``placed`` and ``exit`` lines)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import anyio

from supervisor.backends.job import RoundJob
from supervisor.backends.slurm import states
from supervisor.backends.slurm.nodes import NodeHealth
from supervisor.backends.slurm.queue import JobInfo, Queue
from supervisor.backends.slurm.states import End
from supervisor.config.schema import Config
from supervisor.logs import get_logger


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


@dataclass
class RoundCall:
    config: Config
    job: RoundJob
    argv: list[str]
    on_line: Callable[[str, str], None]
    on_start: Callable[[int], None]
    stop: anyio.Event
    kill: anyio.Event
    placed_at: float | None = None  # monotonic: when the task's placed line was read
    pid: int = 0  # the command's pid on its node (0 until placed)
    code: int | None = None  # the command's return code, from the task's exit line
    log: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.log = get_logger(**self.job.fields())

    def task_line(self, line: str) -> None:
        """A line of the job's stdout: the first ``placed`` line says where the round runs
        (its job id, node and GPU, then in every event: ``job_running``), ``exit`` how
        its command ended."""
        where = states.placed(line)
        if where is not None and self.placed_at is None:
            self.placed_at = time.monotonic()
            self.pid = int(where["pid"])
            self.job.where.pop("queued", None)
            self.job.where.setdefault("job_id", where["job_id"])  # a step learns it here
            self.job.where.update(node=where["node"], gpu=where["gpu"])
            self.log.info("job_running", **self.job.placed())
            self.on_start(self.pid)
        code = states.exited(line)
        if code is not None:
            self.code = code

    def ran_s(self) -> float:
        """How long the round has run on its node (0 before it was placed)."""
        return time.monotonic() - self.placed_at if self.placed_at else 0.0
