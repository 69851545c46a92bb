"""The queue as this experiment sees it: one ``squeue`` per poll for all of its jobs
(``--me``, ended ones included for as long as Slurm keeps them, filtered by the
experiment's tag), never one per round. Round tasks ``watch`` their job and wake when
what Slurm says of it changes, or when it left the queue (``gone``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import anyio

from supervisor.backends.slurm import commands

POLL_S = 1.0  # Slurm's scheduler itself ticks about once a second
FIELDS = ("JobID", "State", "Reason", "NodeList", "exit_code", "Comment", "Name")
# Each field ends with "|" and is not padded; the name comes last (it may hold anything).
FORMAT = ",".join(f"{f}:|" for f in FIELDS[:-1]) + f",{FIELDS[-1]}:"


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str
    reason: str = ""
    nodes: str = ""
    exit_status: int | None = None  # a wait status (squeue's exit_code)
    comment: str = ""
    name: str = ""


def parse(text: str) -> list[JobInfo]:
    """squeue's lines in FORMAT (some versions end the last line without a newline)."""
    jobs = []
    for line in text.splitlines():
        parts = line.split("|", len(FIELDS) - 1)
        if len(parts) != len(FIELDS) or not parts[0].strip():
            continue
        job_id, state, reason, nodes, status, comment, name = (p.strip() for p in parts)
        jobs.append(JobInfo(job_id, state, reason, nodes,
                            int(status) if status.lstrip("-").isdigit() else None,
                            "" if comment == "(null)" else comment, name))
    return jobs


def squeue_argv() -> list[str]:
    return ["squeue", "--me", "--noheader", "--states=all", f"--Format={FORMAT}"]


def ours(jobs: Iterable[JobInfo], tag: str) -> list[JobInfo]:
    return [j for j in jobs if j.comment == tag]


async def list_jobs(tag: str, retry: bool = True) -> list[JobInfo]:
    """This experiment's jobs that Slurm still knows (pending, running, recently ended)."""
    done = await commands.call(squeue_argv(), retry=retry)
    return ours(parse(done.stdout), tag)


class Queue:
    """What Slurm says of the jobs being watched, refreshed by ``serve``."""

    def __init__(self, tag: str, poll_s: float = POLL_S) -> None:
        self.tag, self.poll_s = tag, poll_s
        self.info: dict[str, JobInfo] = {}
        self.gone: set[str] = set()
        self._changed: dict[str, anyio.Event] = {}
        self._since: dict[str, int] = {}  # the first poll that started after the watch
        self._polls = 0  # polls started
        self._wake = anyio.Event()

    def watch(self, job_id: str) -> None:
        self._changed.setdefault(job_id, anyio.Event())
        self._since.setdefault(job_id, self._polls)
        self._wake.set()

    def forget(self, job_id: str) -> None:
        self._changed.pop(job_id, None)
        self._since.pop(job_id, None)
        self.info.pop(job_id, None)
        self.gone.discard(job_id)

    async def changed(self, job_id: str, timeout_s: float) -> None:
        """Until the next poll that saw ``job_id`` change (or ``timeout_s``)."""
        event = self._changed.get(job_id)
        if event is None:
            return
        with anyio.move_on_after(timeout_s):
            await event.wait()

    def _notify(self, job_id: str) -> None:
        event = self._changed.get(job_id)
        if event is not None:
            event.set()
            self._changed[job_id] = anyio.Event()

    def update(self, jobs: list[JobInfo], poll: int | None = None) -> None:
        """One poll's answer: changes wake their watchers; watched jobs missing from it
        have left the queue (unless that poll started before they were watched: a job
        submitted while squeue ran is not in its answer)."""
        seen = {j.job_id: j for j in jobs}
        for job_id in list(self._changed):
            job = seen.get(job_id)
            if job is None:
                early = poll is not None and poll < self._since.get(job_id, 0)
                if job_id not in self.gone and not early:
                    self.gone.add(job_id)
                    self._notify(job_id)
            elif self.info.get(job_id) != job:
                self.info[job_id] = job
                self._notify(job_id)

    async def poll(self) -> None:
        poll, self._polls = self._polls, self._polls + 1
        self.update(await list_jobs(self.tag), poll)

    async def serve(self) -> None:
        """Poll while jobs are watched, until cancelled."""
        while True:
            self._wake = anyio.Event()
            if not self._changed:
                await self._wake.wait()
                continue
            await self.poll()
            await anyio.sleep(self.poll_s)
