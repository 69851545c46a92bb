"""The Slurm backend (``[backend] kind = "slurm"``): Slurm places each round; the rest of the
supervisor (state machine, plan, merger, manifest, resume) is the same as on one server.

The pool's GPUs are *places*: in jobs mode ``slurm/gpuK`` for K below ``max_jobs`` (a
place is a round submitted, wherever Slurm runs it); in steps mode ``NODE/gpuK``, one per
GPU each node of the allocation holds (a step runs on that node, on the GPU Slurm gives
it). Where a round really ran (node, GPU as the job saw it, job id) goes into its events
(``RoundJob.where``, the journal's ``RoundPlaced``). ``open_backend`` makes every check
that can fail before the run starts (exit 2, one line naming Slurm and what failed).
"""

from __future__ import annotations

import subprocess
from typing import Any, Callable, Sequence

import anyio

from supervisor.backends import runner
from supervisor.backends.job import RoundJob
from supervisor.backends.slurm import allocation, commands, states
from supervisor.backends.slurm.host import RoundCall
from supervisor.backends.slurm.jobs import JobRound
from supervisor.backends.slurm.nodes import NodeHealth
from supervisor.backends.slurm.queue import JobInfo, Queue, ours, parse, squeue_argv
from supervisor.backends.slurm.steps import StepRound
from supervisor.backends.slurm.submit import GPU_PLACEHOLDER
from supervisor.config.schema import Config
from supervisor.core import slots
from supervisor.core.slots import GpuKey
from supervisor.gpus.probe import ProbeError, Reading
from supervisor.logs import get_logger

JOBS_NODE = "slurm"  # the node part of a jobs-mode place: Slurm decides the node


class SlurmBackend:
    kind = "slurm"
    gpu_value = GPU_PLACEHOLDER  # {gpu} is filled in by the job (task.py)

    def __init__(self, config: Config, mode: str, tag: str,
                 places: dict[str, int], job_id: str | None = None,
                 test_only: str = "") -> None:
        self.config, self.mode, self.tag = config, mode, tag
        self.dynamic = mode == "steps"  # an allocation's node can fail under --no-kill
        self.allocation = job_id  # steps: the allocation's job id
        self.test_only = test_only  # what `sbatch --test-only` said of the options
        self.places: dict[GpuKey, None] = {}
        self._set_places(places)
        self.queue = Queue(tag)
        self.nodes = NodeHealth(config.gpu.quarantine_after)
        self.log = get_logger()
        self.draining = False
        self.ours: set[str] = set()  # job ids this supervisor cancelled
        self.live: set[str] = set()  # job ids submitted or adopted and not ended
        self.adopted_jobs: dict[str, JobInfo] = {}  # round name -> a job found at start
        self.steps: dict[str, Any] = {}  # round name -> its StepRound
        self._removed: list[tuple[GpuKey, str]] = []

    def _set_places(self, places: dict[str, int]) -> None:
        self.places = {slots.make(node, k): None for node, n in sorted(places.items())
                       for k in range(n)}

    # -- the Probe interface: places, no NVML across the cluster --------------------------
    def gpu_indices(self) -> list[GpuKey]:
        return sorted(self.places, key=slots.order)

    def read(self, gpu: Any) -> Reading:
        if gpu not in self.places:
            raise ProbeError(f"{slots.label(gpu)} is not in the allocation any more")
        return Reading()

    def nodes_of(self) -> dict[str, list[GpuKey]]:
        out: dict[str, list[GpuKey]] = {}
        for key in self.gpu_indices():
            out.setdefault(slots.node(key) or "", []).append(key)
        return out

    # -- rounds ----------------------------------------------------------------------------
    async def execute(self, config: Config, job: RoundJob, argv: Sequence[str],
                      on_line: Callable[[str, str], None], on_start: Callable[[int], None],
                      stop: anyio.Event, kill: anyio.Event) -> runner.ChildExit:
        kind = StepRound if self.mode == "steps" else JobRound
        call = RoundCall(config, job, list(argv), on_line, on_start, stop, kill)
        return await kind(self, call).run()

    def adopted(self, name: str) -> bool:
        """A job of this round found at start, still to be waited for (its folder is its)."""
        return name in self.adopted_jobs

    def take_adopted(self, name: str) -> JobInfo | None:
        return self.adopted_jobs.pop(name, None)

    def drain(self) -> None:
        """The first signal: nothing new is submitted (the dispatcher stops), and what
        Slurm has not started yet is cancelled at once (each round's task does it)."""
        self.draining = True
        for step in list(self.steps.values()):
            step.drain()
        pending = [j.job_id for j in self.adopted_jobs.values() if not states.has_started(j.state)]
        if pending:
            self.ours.update(pending)
            subprocess.run(["scancel", *pending], capture_output=True, timeout=30)

    async def cancel(self, job_ids: list[str], *options: str) -> None:
        """scancel (Slurm's SIGTERM, then SIGKILL after its KillWait)."""
        try:
            await commands.call(["scancel", *options, *job_ids])
        except commands.SlurmError as exc:  # already ended: nothing to cancel
            self.log.warning("slurm_cancel_failed", job_ids=job_ids, error=str(exc))

    async def job_record(self, job_id: str) -> dict[str, str] | None:
        """What Slurm still knows of an ended job: scontrol, then accounting (sacct)."""
        try:
            text = (await commands.call(["scontrol", "show", "job", job_id])).stdout
            return dict(w.split("=", 1) for w in text.split() if "=" in w)
        except commands.SlurmError:
            pass
        try:
            done = await commands.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o",
                                       "State,ExitCode,Reason"])
        except commands.SlurmError:
            return None
        rows = [line.split("|") for line in done.stdout.splitlines() if line.count("|") == 2]
        if not rows:
            return None
        state, code, reason = rows[-1]
        return {"JobState": state.split()[0], "ExitCode": code, "Reason": reason}

    def judge_node(self, job: RoundJob, end: states.End) -> None:
        """Node health: a node whose rounds keep failing is excluded (logged once)."""
        node = job.where.get("node")
        if not node:
            return
        if end.kind == states.OK:
            excluded = self.nodes.succeeded(node, job.name)
        elif end.kind in (states.FAILED, states.TIME_LIMIT):
            why = self.nodes.failed(node, job.object_code, job.name, end.reason)
            excluded = [(node, why)] if why else []
        else:
            return
        for name, why in excluded:
            self.log.error("node_excluded", node=name, reason=why, mode=self.mode)
            if self.mode == "steps":
                for key in [k for k in self.places if slots.node(k) == name]:
                    self._removed.append((key, f"node excluded: {why}"))

    # -- following the allocation (steps) ----------------------------------------------------
    async def refresh(self) -> tuple[list[GpuKey], list[tuple[GpuKey, str]]]:
        removed, self._removed = self._removed, []
        if self.mode == "steps" and self.allocation:
            try:
                text = (await commands.call(["scontrol", "show", "job", "-d",
                                             self.allocation])).stdout
            except commands.SlurmError as exc:
                self.log.warning("slurm_allocation_unread", error=str(exc))
                text = None
            if text is not None:
                held = allocation.places(text, self.config.backend.gres)
                removed += [(k, f"node lost: {slots.node(k)} left the allocation")
                            for k in self.places
                            if held.get(slots.node(k) or "", 0) <= slots.device(k)]
        for key, _ in removed:
            self.places.pop(key, None)
        return [], removed

    async def serve(self) -> None:
        if self.mode == "jobs":
            await self.queue.serve()

    # -- start and end -------------------------------------------------------------------
    def adopt(self, found: dict[str, JobInfo], cancel: list[JobInfo]) -> None:
        self.adopted_jobs = dict(found)
        if cancel:
            ids = [j.job_id for j in cancel]
            self.ours.update(ids)
            self.log.info("jobs_cancelled", job_ids=ids,
                          reason="left by an earlier supervisor; not needed by this run")
            subprocess.run(["scancel", *ids], capture_output=True, timeout=30)

    def close(self) -> None:
        """Cancel what this experiment still has in the queue: nothing outlives the run."""
        left = set(self.live)
        if self.mode == "jobs":
            try:
                done = subprocess.run(squeue_argv(), capture_output=True, text=True, timeout=30)
                left |= {j.job_id for j in ours(parse(done.stdout), self.tag)
                         if states.is_live(j.state)}
            except (OSError, subprocess.SubprocessError):
                pass
        if left:
            subprocess.run(["scancel", *sorted(left)], capture_output=True, timeout=30)
