"""One round as a job step of the supervisor's own allocation (``mode = "steps"``).

``srun --exact`` runs ``task`` on the round's node with one GPU of the allocation; srun
is a child of the supervisor, started by the runner exactly as a local round is (its own
session, dying with the supervisor, its lines through its pipes as they are printed,
the stall and total timeouts, SIGTERM then SIGKILL to stop it: srun passes the stop on to
the step). How the step ended is read from task's ``exit`` line and from what srun and
slurmstepd print (srun exits 0 after a node failure), by ``states.step_end``.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Callable, Sequence

import anyio

from supervisor.backends import runner
from supervisor.backends.base import RoundError, RoundLost
from supervisor.backends.job import ROUND_ENV, RoundJob, round_env
from supervisor.backends.slurm import states, submit
from supervisor.backends.slurm.host import Host
from supervisor.config.schema import Config
from supervisor.core import slots
from supervisor.logs import get_logger

SLURM_LINES = 20  # srun's and slurmstepd's own lines kept to tell how a step ended


class StepRound:
    def __init__(self, backend: Host, config: Config, job: RoundJob,
                 argv: Sequence[str], on_line: Callable[[str, str], None],
                 on_start: Callable[[int], None], stop: anyio.Event, kill: anyio.Event) -> None:
        self.b, self.config, self.job, self.argv = backend, config, job, list(argv)
        self.on_line, self.on_start, self.stop, self.kill = on_line, on_start, stop, kill
        self.log = get_logger(**job.fields())
        self.halt = anyio.Event()  # stop srun: ours, or a drain before the step started
        self.drained = False
        self.code: int | None = None
        self.pid = 0
        self.placed_at: float | None = None
        self.slurm_lines: deque[str] = deque(maxlen=SLURM_LINES)

    def _line(self, stream: str, line: str) -> None:
        if stream == "stdout":
            where = states.placed(line)
            if where is not None and self.placed_at is None:
                self.placed_at = time.monotonic()
                self.pid = int(where["pid"])
                self.job.where.pop("queued", None)
                self.job.where.update(job_id=where["job_id"], node=where["node"],
                                      gpu=where["gpu"])
                self.log.info("job_running", **self.job.placed())
                self.on_start(self.pid)
            code = states.exited(line)
            if code is not None:
                self.code = code
        elif line.startswith(("srun:", "slurmstepd")):
            self.slurm_lines.append(line)
            if self.placed_at is None and "step creation" in line:
                self.job.where["queued"] = "pending (step creation: resources busy)"
        self.on_line(stream, line)

    def drain(self) -> None:
        if self.placed_at is None:
            self.drained = True
            self.halt.set()

    async def run(self) -> runner.ChildExit:
        s, t = self.config.backend, self.config.timeouts
        node = slots.node(self.job.gpu) or ""
        env = {**round_env(self.config), ROUND_ENV: self.job.name}
        argv = submit.srun_argv(s, self.job.name, node, self.config.main.cwd,
                                self.config.main.threads) + submit.task_argv(self.argv, env)
        self.b.steps[self.job.name] = self
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._relay)
                exit_ = await runner.run_child(
                    argv, cwd=self.config.main.cwd, env=dict(os.environ), on_line=self._line,
                    stop=self.halt, kill=self.kill, timeout_s=t.round_timeout_s,
                    stall_timeout_s=t.stall_timeout_s, grace_s=t.grace_s)
                tg.cancel_scope.cancel()
        finally:
            self.b.steps.pop(self.job.name, None)
        return self._exit(exit_)

    async def _relay(self) -> None:
        await self.stop.wait()
        self.halt.set()

    def _exit(self, exit_: runner.ChildExit) -> runner.ChildExit:
        if self.drained and self.placed_at is None:
            raise RoundLost("drained: stopped before Slurm started the step")
        if exit_.stopped:  # ours: a stop, the stall or total timeout
            return runner.ChildExit(self.pid or exit_.pid, exit_.returncode, exit_.stopped)
        code = self.code if self.code is not None else exit_.returncode
        ran = time.monotonic() - self.placed_at if self.placed_at else 0.0
        end = states.step_end(list(self.slurm_lines), code, self.stop.is_set(), ran,
                              self.config.backend.time_limit)
        self.b.judge_node(self.job, end)
        if end.kind == states.OK:
            return runner.ChildExit(self.pid, 0, None)
        if end.kind == states.CAPACITY:
            raise RoundLost(end.reason)
        if end.kind == states.STOPPED:
            return runner.ChildExit(self.pid, code if code is not None else -15, "stop")
        if end.kind == states.FAILED and self.placed_at and code is not None:
            return runner.ChildExit(self.pid, code, None)
        last = self.slurm_lines[-1] if self.slurm_lines else f"srun exit status {code}"
        raise RoundError(end.reason if end.kind == states.TIME_LIMIT else
                         f"the step did not start: {last}")
