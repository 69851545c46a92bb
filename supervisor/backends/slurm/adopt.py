"""Which of this experiment's jobs a restarted supervisor keeps, pure.

After a ``kill -9`` the jobs live on (they are not the supervisor's children). The run
that resumes finds them by their tag (``--comment``) and sorts them: a job is adopted
(waited for, its result merged once) when its round is to run again and it is the
latest job of that round, and either still pending or running, or the very job that was
running when the supervisor died (its id is in the journal); every other job still in the
queue is cancelled (its round is done, discarded, or has a newer job). An ended job of an
earlier attempt is never adopted: its outcome was recorded already.
"""

from __future__ import annotations

from typing import Mapping

from supervisor.backends.slurm.queue import JobInfo
from supervisor.backends.slurm.states import is_live


def _newest(jobs: list[JobInfo]) -> JobInfo:
    return max(jobs, key=lambda j: (int(j.job_id) if j.job_id.isdigit() else -1, j.job_id))


def sort_found(found: list[JobInfo], running: Mapping[str, str | None],
               to_run: set[str]) -> tuple[dict[str, JobInfo], list[JobInfo]]:
    """(round name -> the job to adopt, live jobs to cancel). ``running``: rounds that were
    running when the last supervisor stopped, with the job id it recorded; ``to_run``:
    rounds this run will start (or attach to) again."""
    by_name: dict[str, list[JobInfo]] = {}
    for job in found:
        by_name.setdefault(job.name, []).append(job)
    adopt: dict[str, JobInfo] = {}
    cancel: list[JobInfo] = []
    for name, jobs in by_name.items():
        newest = _newest(jobs)
        wanted = name in to_run and (is_live(newest.state) or (
            name in running and running[name] == newest.job_id))
        if wanted:
            adopt[name] = newest
        cancel += [j for j in jobs if is_live(j.state) and not (wanted and j is newest)]
    return adopt, cancel
