"""The records of an experiment: objects, their rounds and the GPUs, with enum statuses.

Plain data with JSON (de)serialisation. Only ``supervisor.core.state`` changes them; every
other module reads them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any

from supervisor.core import slots
from supervisor.core.slots import GpuKey


class RoundStatus(str, Enum):
    PENDING = "pending"  # to run (new, or a retry)
    RUNNING = "running"
    INTERRUPTED = "interrupted"  # stopped by the supervisor: runs again, same name and seed
    VALIDATING = "validating"  # produced; its grasps are being validated ([validate])
    FINISHED = "finished"  # valid grasps held (round folder), not yet in final.npz
    MERGED = "merged"  # its grasps are in final.npz
    FAILED = "failed"  # failed for good
    DISCARDED = "discarded"  # not needed: its object was done without it

    def __str__(self) -> str:
        return self.value


class ObjectStatus(str, Enum):
    ACTIVE = "active"
    DONE = "done"
    FAILED = "failed"
    EXHAUSTED = "exhausted"  # max_rounds reached

    def __str__(self) -> str:
        return self.value


class GpuStatus(str, Enum):
    HEALTHY = "healthy"
    QUARANTINED = "quarantined"  # K rounds in a row failed there while others succeeded
    LOST = "lost"  # NVML could not read it, or a read hung

    def __str__(self) -> str:
        return self.value


TO_RUN = (RoundStatus.PENDING, RoundStatus.INTERRUPTED)
HAS_GRASPS = (RoundStatus.FINISHED, RoundStatus.MERGED)


def now() -> float:
    return round(time.time(), 3)


@dataclass
class RoundRecord:
    round_id: int
    name: str
    seed: int
    status: RoundStatus = RoundStatus.PENDING
    attempts: int = 0
    gpu: GpuKey | None = None
    node: str | None = None
    exit_code: int | None = None
    produced: int | None = None
    accepted: int | None = None  # passed the quality filter
    unique: int | None = None  # of those, not near-duplicates of earlier grasps ([dedup])
    used: int | None = None  # grasps of this round in final.npz
    started_at: float | None = None
    finished_at: float | None = None
    reason: str | None = None
    pid: int | None = None  # the round's process group leader while it runs
    proc_start: int | None = None  # its start time in clock ticks (/proc/PID/stat field 22)
    # Slurm: the job (or step) of this attempt, and the GPU it was given on ``node``
    job_id: str | None = None
    device: int | str | None = None
    # Earlier attempts that did not produce grasps: {"attempt", "kind": "failed" or
    # "interrupted", "reason", "gpu", "exit_code", "at", "duration_s"}.
    failures: list[dict[str, Any]] = field(default_factory=list)
    # [validate]: of the accepted grasps, how many passed, the others by reason, and when
    passed: int | None = None
    failed_by: dict[str, int] | None = None
    validated_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy is the slowest part of a big snapshot.
        data = {name: getattr(self, name) for name in ROUND_FIELDS}
        data["status"] = self.status.value
        data["failures"] = [dict(f) for f in self.failures]
        if self.failed_by is not None:
            data["failed_by"] = dict(self.failed_by)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RoundRecord:
        try:
            rnd = cls(**data)
        except TypeError:  # a field of a newer or older version: keep what we know
            rnd = cls(**{k: v for k, v in data.items() if k in ROUND_FIELDS})
        rnd.status = RoundStatus(rnd.status)
        return rnd


ROUND_FIELDS = tuple(f.name for f in fields(RoundRecord))


@dataclass
class ObjectRecord:
    code: str
    index: int
    target: int
    status: ObjectStatus = ObjectStatus.ACTIVE
    collected: int = 0  # grasps in final.npz
    consecutive_failures: int = 0
    reason: str | None = None
    # What the last write of final.npz left on disk, to tell when it changed since.
    final_bytes: int | None = None
    final_mtime_ns: int | None = None
    final_digest: str | None = None  # supervisor.dataset.final.digest of what was written
    rounds: dict[int, RoundRecord] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status == ObjectStatus.DONE

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "target": self.target,
            "status": self.status.value,
            "done": self.done,
            "collected": self.collected,
            "consecutive_failures": self.consecutive_failures,
            "reason": self.reason,
            "final_bytes": self.final_bytes,
            "final_mtime_ns": self.final_mtime_ns,
            "final_digest": self.final_digest,
            "rounds": {str(rid): r.to_json() for rid, r in sorted(self.rounds.items())},
        }

    @classmethod
    def from_json(cls, code: str, o: dict[str, Any]) -> ObjectRecord:
        rounds = {int(k): RoundRecord.from_json(v) for k, v in o["rounds"].items()}
        for rid, rnd in rounds.items():
            if rnd.round_id != rid:
                raise ValueError(f"{code}: round key {rid} holds round {rnd.round_id}")
        return cls(
            code=code, index=int(o["index"]), target=int(o["target"]),
            status=ObjectStatus(o["status"]), collected=int(o["collected"]),
            consecutive_failures=int(o["consecutive_failures"]), reason=o.get("reason"),
            final_bytes=o.get("final_bytes"), final_mtime_ns=o.get("final_mtime_ns"),
            final_digest=o.get("final_digest"), rounds=rounds,
        )


def removed(obj: ObjectRecord) -> tuple[int, int]:
    """Grasps the quality filter and [dedup] removed from the rounds that produced (the
    near-duplicates among those that passed validation, with [validate])."""
    filtered = duplicates = 0
    for r in obj.rounds.values():
        if r.accepted is None or r.produced is None:
            continue
        filtered += r.produced - r.accepted
        kept = r.passed if r.passed is not None else r.accepted
        duplicates += kept - r.unique if r.unique is not None else 0
    return filtered, duplicates


def validated(obj: ObjectRecord) -> tuple[int, int, dict[str, int]]:
    """[validate]: grasps validated, passed, and failed by reason, over the object's
    rounds that were validated."""
    checked = passed = 0
    reasons: dict[str, int] = {}
    for r in obj.rounds.values():
        if r.passed is None or r.accepted is None:
            continue
        checked += r.accepted
        passed += r.passed
        for reason, n in (r.failed_by or {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    return checked, passed, reasons


def _gains(data: dict[str, Any], key: str = "gains") -> dict[int, float]:
    """A manifest from before the meter counted start-ups has no "sharing": its gains
    were sharing figures (one round iterating = 1.0), so they move there and the
    wall-time gains are measured afresh (the two would not compare)."""
    old = "sharing" not in data
    if old and key == "gains":
        return {}
    return {int(k): float(v) for k, v in data.get("gains" if old else key, {}).items()}


@dataclass
class GpuRecord:
    gpu: GpuKey
    node: str | None = None
    status: GpuStatus = GpuStatus.HEALTHY
    rounds_ok: int = 0
    rounds_failed: int = 0
    streak: int = 0  # rounds failed in a row here
    # (object_code, round_id) of the current streak, and their reasons (the last few)
    streak_rounds: list[tuple[str, int]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    reason: str | None = None  # why it was taken out
    footprint_mib: int | None = None  # largest memory NVML showed for one round here
    # Packing (max_rounds_per_gpu = "auto", supervisor.core.packing): rounds at once now,
    # the card's throughput measured at each level (relative to one round, and grasps/s),
    # until when it is not raised (after an out-of-memory), when the next level is tried
    # again, and how many out-of-memory errors a round alone on the card had.
    level: int | None = None
    gains: dict[int, float] = field(default_factory=dict)
    rates: dict[int, float] = field(default_factory=dict)
    sharing: dict[int, float] = field(default_factory=dict)  # gains, start-ups left out
    held_until: float = 0.0
    retest_at: float = 0.0
    ooms_alone: int = 0
    drifts: int = 0  # measurements in a row far from the level's own earlier one
    backoffs: int = 0  # steps back since the card last changed: each doubles the re-test wait
    # while the level above one it held is re-tested: the level held; and what each level
    # stepped back from measured then (over one round), the one figure quoted for it
    retest_from: int | None = None
    worse: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "node": self.node, "status": self.status.value,
                "rounds_ok": self.rounds_ok, "rounds_failed": self.rounds_failed,
                "streak": self.streak, "streak_rounds": [list(r) for r in self.streak_rounds],
                "reason": self.reason, "reasons": list(self.reasons),
                "footprint_mib": self.footprint_mib, "level": self.level,
                "gains": {str(k): v for k, v in sorted(self.gains.items())},
                "rates": {str(k): v for k, v in sorted(self.rates.items())},
                "sharing": {str(k): v for k, v in sorted(self.sharing.items())},
                "held_until": self.held_until, "retest_at": self.retest_at,
                "ooms_alone": self.ooms_alone, "drifts": self.drifts,
                "backoffs": self.backoffs, "retest_from": self.retest_from,
                "worse": {str(k): v for k, v in sorted(self.worse.items())}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuRecord:
        return cls(gpu=slots.parse(data["gpu"]), node=data.get("node"),
                   status=GpuStatus(data.get("status", "healthy")),
                   rounds_ok=int(data.get("rounds_ok", 0)),
                   rounds_failed=int(data.get("rounds_failed", 0)),
                   streak=int(data.get("streak", 0)),
                   streak_rounds=[(str(c), int(r)) for c, r in data.get("streak_rounds", [])],
                   reason=data.get("reason"), reasons=list(data.get("reasons", [])),
                   footprint_mib=data.get("footprint_mib"), level=data.get("level"),
                   gains=_gains(data),
                   rates={int(k): float(v) for k, v in data.get("rates", {}).items()},
                   sharing=_gains(data, "sharing"),
                   held_until=float(data.get("held_until", 0.0)),
                   retest_at=float(data.get("retest_at", 0.0)),
                   ooms_alone=int(data.get("ooms_alone", 0)),
                   drifts=int(data.get("drifts", 0)),
                   backoffs=int(data.get("backoffs", 0)),
                   retest_from=data.get("retest_from"),
                   worse={int(k): float(v) for k, v in data.get("worse", {}).items()})
