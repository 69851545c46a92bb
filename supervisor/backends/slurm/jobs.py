"""One round as a Slurm batch job (``mode = "jobs"``).

``sbatch`` reads a two-line script on stdin that execs ``task`` (which fills in the GPU
and starts main.py through ``launch``); the job's ``--output`` and ``--error`` files, in
the experiment's ``slurm/`` folder, are followed as the job writes them, into the same
round and GPU logs, ``round_progress`` events and stall watchdog as on one server. The
job's start is its ``placed`` line; a clean end is its ``exit=0`` line (no wait for the
queue); any other end is what Slurm says (one ``squeue`` a poll for all jobs, ``scontrol``
for a job that left the queue before its end was read), turned into an outcome by
``states.job_end``.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from supervisor.backends import runner
from supervisor.backends.base import RoundError, RoundLost
from supervisor.backends.job import ROUND_ENV, round_env
from supervisor.backends.slurm import commands, states, submit
from supervisor.backends.slurm.follow import Follower
from supervisor.backends.slurm.host import Host, RoundCall
from supervisor.backends.slurm.queue import JobInfo
from supervisor.config.schema import Config
from supervisor.storage import paths

FOLLOW_S = 0.1  # how often the job's files are read (a local stat and read)
END_WAIT_S = 10.0  # after our scancel, beyond grace_s: how long Slurm may take to confirm
SLURM_DIR = "slurm"


def output_files(config: Config, name: str) -> tuple[Path, Path]:
    folder = config.exp_dir / SLURM_DIR
    return folder / f"{name}.out", folder / f"{name}.err"


class JobRound:
    def __init__(self, backend: Host, call: RoundCall) -> None:
        self.b, self.r = backend, call
        self.config, self.job, self.log = call.config, call.job, call.log
        self.job_id = ""
        self.last_output = time.monotonic()
        self.cancelled: str | None = None  # why we cancelled it: stop, drain, stall, timeout
        self.cancelled_at = 0.0
        self.killed = False
        self.pending_reason = ""

    # -- start -----------------------------------------------------------------------
    async def run(self) -> runner.ChildExit:
        adopted = self.b.take_adopted(self.job.name)
        out, err = output_files(self.config, self.job.name)
        if adopted is not None:
            self.job_id = adopted.job_id
            self.log.info("job_adopted", job_id=self.job_id, state=adopted.state)
        else:
            self.job_id = await self._submit(out, err)
        self.job.where["job_id"] = self.job_id
        self.r.on_start(0)
        self.b.queue.watch(self.job_id)
        self.b.live.add(self.job_id)
        try:
            end = await self._follow(Follower(out, "stdout", self._line),
                                     Follower(err, "stderr", self._line))
        finally:
            self.b.queue.forget(self.job_id)
        self.b.live.discard(self.job_id)
        self.b.judge_node(self.job, end)
        if not self.config.keep_intermediate:  # its lines are in the round's log
            for path in (out, err):
                path.unlink(missing_ok=True)
        return self._exit(end)

    async def _submit(self, out: Path, err: Path) -> str:
        await anyio.to_thread.run_sync(self._fresh_files, out, err)
        s, t = self.config.backend, self.config.main.threads
        argv = submit.sbatch_argv(s, self.job.name, self.b.tag, out, err, self.config.main.cwd,
                                  t, exclude=tuple(self.b.nodes.excluded))
        env = {**round_env(self.config), ROUND_ENV: self.job.name}
        try:
            done = await commands.call(argv, input=submit.batch_script(self.r.argv, env))
        except commands.SlurmError as exc:
            raise RoundError(f"sbatch refused the job: {exc}") from None
        job_id = done.stdout.strip().split(";")[0]
        self.log.info("job_submitted", job_id=job_id, exclude=sorted(self.b.nodes.excluded))
        return job_id

    @staticmethod
    def _fresh_files(out: Path, err: Path) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        for path in (out, err):  # an earlier attempt's lines are not this one's
            path.unlink(missing_ok=True)

    # -- while it runs -----------------------------------------------------------------
    def _line(self, stream: str, line: str) -> None:
        self.last_output = time.monotonic()
        if stream == "stdout":
            self.r.task_line(line)
        self.r.on_line(stream, line)

    def _seen(self, info: JobInfo) -> None:
        """What the queue says of a job not placed yet: why it waits."""
        if self.r.placed_at is not None or states.has_started(info.state):
            self.job.where.pop("queued", None)
            return
        reason = info.reason if info.reason not in ("", "None") else info.state.lower()
        self.job.where["queued"] = f"pending ({reason})"
        if reason != self.pending_reason:
            self.pending_reason = reason
            self.log.info("job_pending", job_id=self.job_id, reason=reason)

    async def _follow(self, out: Follower, err: Follower) -> states.End:
        while True:
            out.read()
            err.read()
            if self.r.code == 0 and not self.cancelled:
                out.finish(), err.finish()
                return states.End(states.OK, "completed", 0)
            info = self.b.queue.info.get(self.job_id)
            if info is not None:
                self._seen(info)
                if not states.is_live(info.state):
                    out.finish(), err.finish()
                    return self._end(info.state, info.reason, states.wait_status(info.exit_status))
            if self.job_id in self.b.queue.gone:
                out.finish(), err.finish()
                return await self._resolve_gone()
            if await self._limits():
                out.finish(), err.finish()
                return states.End(states.STOPPED, "Slurm did not confirm the cancel in time")
            await self.b.queue.changed(self.job_id, FOLLOW_S)

    async def _limits(self) -> bool:
        """Stop, kill, drain, stall and timeout; True once a cancelled job is overdue."""
        t, now = self.config.timeouts, time.monotonic()
        running = self.r.placed_at is not None
        if self.r.kill.is_set() and not self.killed:
            self.killed = True
            await self._cancel("stop", "--signal=KILL")
        elif self.r.stop.is_set():
            await self._cancel("stop")
        elif self.b.draining and not running:
            await self._cancel("drain")
        elif running and t.stall_timeout_s and now - self.last_output > t.stall_timeout_s:
            await self._cancel("stall")
        elif running and t.round_timeout_s and now - self.r.placed_at > t.round_timeout_s:
            await self._cancel("timeout")
        return bool(self.cancelled) and now - self.cancelled_at > t.grace_s + END_WAIT_S

    async def _cancel(self, why: str, *options: str) -> None:
        if self.cancelled and not options:
            return
        if not self.cancelled:
            self.cancelled, self.cancelled_at = why, time.monotonic()
        self.b.ours.add(self.job_id)
        await self.b.cancel([self.job_id], *options)

    # -- the end ---------------------------------------------------------------------
    def _end(self, state: str, reason: str, slurm_code: int | None) -> states.End:
        code = self.r.code if self.r.code is not None else slurm_code
        ran = self.r.ran_s()
        return states.job_end(state, code, reason, self.job_id in self.b.ours, ran,
                              self.config.backend.time_limit)

    async def _resolve_gone(self) -> states.End:
        """The job left the queue before its end was read: ask scontrol (it keeps ended
        jobs a while), then accounting where there is any; else its own exit line, else
        its result file; never assumed."""
        record = await self.b.job_record(self.job_id)
        if record is not None:
            return self._end(record.get("JobState", ""), record.get("Reason", ""),
                             states.scontrol_exit(record.get("ExitCode")))
        if self.r.code is not None:
            return self._end("COMPLETED" if self.r.code == 0 else "FAILED", "", self.r.code)
        result = paths.result(self.config, self.job.name, self.job.object_code)
        if result.exists():
            return states.End(states.OK, "completed (its result file is there)", 0)
        return states.End(states.CAPACITY, f"capacity: job {self.job_id} left the queue before "
                                           "its end was read and Slurm keeps no record of it; "
                                           "runs again")

    def _exit(self, end: states.End) -> runner.ChildExit:
        if end.kind == states.OK:
            return runner.ChildExit(self.r.pid, 0, None)
        if end.kind == states.CAPACITY:
            raise RoundLost(end.reason)
        if end.kind == states.STOPPED or self.cancelled:
            if self.cancelled == "drain":
                raise RoundLost("drained: cancelled before Slurm started it")
            stopped = self.cancelled if self.cancelled in ("stall", "timeout") else "stop"
            code = end.exit_code if end.exit_code is not None else -15
            return runner.ChildExit(self.r.pid, code, stopped)
        if end.kind == states.FAILED and end.exit_code is not None and self.r.placed_at:
            return runner.ChildExit(self.r.pid, end.exit_code, None)  # as on one server
        raise RoundError(end.reason)
