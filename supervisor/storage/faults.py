"""Fault-injection seams for the kill-anywhere tests and benchmark.

``SUPERVISOR_CRASH_AT=POINT:N`` makes the supervisor SIGKILL itself the N-th time it
reaches POINT (one of CRASH_POINTS). Unset, as in every real run, this costs one
environment lookup per write.
"""

from __future__ import annotations

import os
import signal

ENV = "SUPERVISOR_CRASH_AT"
CRASH_POINTS = (
    "write.before_replace",  # temp file written and fsynced, not yet renamed
    "write.after_replace",  # renamed, folder not yet fsynced
    "journal.before_fsync",  # events written to the journal, not yet fsynced
    "flush.after_dataset",  # a final.npz written, the event recording it not yet
    "flush.after_datasets",  # datasets written and journaled, round folders not yet cleaned
)
_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, count = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
