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
from collections import deque

import anyio

from supervisor.backends import runner
from supervisor.backends.base import RoundError, RoundLost
from supervisor.backends.job import ROUND_ENV, round_env
from supervisor.backends.slurm import states, submit
from supervisor.backends.slurm.host import Host, RoundCall
from supervisor.core import slots

SLURM_LINES = 20  # srun's and slurmstepd's own lines kept to tell how a step ended


class StepRound:
    def __init__(self, backend: Host, call: RoundCall) -> None:
        self.b, self.r = backend, call
        self.config, self.job, self.log = call.config, call.job, call.log
        self.halt = anyio.Event()  # stop srun: ours, or a drain before the step started
        self.drained = False
        self.slurm_lines: deque[str] = deque(maxlen=SLURM_LINES)

    def _line(self, stream: str, line: str) -> None:
        if stream == "stdout":
            self.r.task_line(line)
        elif line.startswith(("srun:", "slurmstepd")):
            self.slurm_lines.append(line)
            if self.r.placed_at is None and "step creation" in line:
                self.job.where["queued"] = "pending (step creation: resources busy)"
        self.r.on_line(stream, line)

    def drain(self) -> None:
        if self.r.placed_at is None:
            self.drained = True
            self.halt.set()

    async def run(self) -> runner.ChildExit:
        s, t = self.config.backend, self.config.timeouts
        node = slots.node(self.job.gpu) or ""
        env = {**round_env(self.config), ROUND_ENV: self.job.name}
        argv = submit.srun_argv(s, self.job.name, node, self.config.main.cwd,
                                self.config.main.threads) + submit.task_argv(self.r.argv, env)
        self.b.steps[self.job.name] = self
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._relay)
                exit_ = await runner.run_child(
                    argv, cwd=self.config.main.cwd, env=dict(os.environ), on_line=self._line,
                    stop=self.halt, kill=self.r.kill, timeout_s=t.round_timeout_s,
                    stall_timeout_s=t.stall_timeout_s, grace_s=t.grace_s)
                tg.cancel_scope.cancel()
        finally:
            self.b.steps.pop(self.job.name, None)
        return self._exit(exit_)

    async def _relay(self) -> None:
        await self.r.stop.wait()
        self.halt.set()

    def _exit(self, exit_: runner.ChildExit) -> runner.ChildExit:
        if self.drained and self.r.placed_at is None:
            raise RoundLost("drained: stopped before Slurm started the step")
        if exit_.stopped:  # ours: a stop, the stall or total timeout
            return runner.ChildExit(self.r.pid or exit_.pid, exit_.returncode, exit_.stopped)
        code = self.r.code if self.r.code is not None else exit_.returncode
        ran = self.r.ran_s()
        end = states.step_end(list(self.slurm_lines), code, self.r.stop.is_set(), ran,
                              self.config.backend.time_limit)
        self.b.judge_node(self.job, end)
        if end.kind == states.OK:
            return runner.ChildExit(self.r.pid, 0, None)
        if end.kind == states.CAPACITY:
            raise RoundLost(end.reason)
        if end.kind == states.STOPPED:
            return runner.ChildExit(self.r.pid, code if code is not None else -15, "stop")
        if end.kind == states.FAILED and self.r.placed_at and code is not None:
            return runner.ChildExit(self.r.pid, code, None)
        last = self.slurm_lines[-1] if self.slurm_lines else f"srun exit status {code}"
        raise RoundError(end.reason if end.kind == states.TIME_LIMIT else
                         f"the step did not start: {last}")
