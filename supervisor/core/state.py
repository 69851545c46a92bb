"""The state of an experiment and the effects its transitions ask for.

``State`` holds the records (``supervisor.core.records``) plus counters kept up to date as
they change, so that every decision is O(1) or O(object). ``set_round`` and
``set_object`` are the only assignments of a status; ``supervisor.core.transitions.apply`` is
the only caller. No I/O here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Union

from supervisor.core.records import (
    HAS_GRASPS, TO_RUN, GpuRecord, GpuStatus, ObjectRecord, ObjectStatus, RoundRecord,
    RoundStatus,
)

R, O = RoundStatus, ObjectStatus


@dataclass(frozen=True)
class Policy:
    """The config's settings that decisions depend on."""
    exp_name: str
    seed_base: int = 0
    batch_size: int = 512
    max_rounds: int = 1000
    max_attempts: int = 3
    max_consecutive_failed_rounds: int = 5
    quarantine_after: int = 3
    merge_stride: int | None = None  # None: "auto", rewrite when held rounds >= written
    dedup: bool = False  # count rounds' unique grasps (once known) instead of accepted
    # max_rounds_per_gpu = "auto": levels found by measured throughput (core.packing)
    packing: bool = False
    pack_gain: float = 0.1
    pack_retest_s: float = 1800.0
    # [validate]: rounds are validated before they count; the quota counts grasps that passed
    validate: bool = False
    # False where a GPU key is a scheduler's place, not a card (Slurm): a failing node is
    # excluded by the backend instead (supervisor.backends.slurm.nodes)
    quarantine: bool = True


# -- effects ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Log:
    event: str
    fields: dict[str, Any]
    level: str = "info"


@dataclass(frozen=True)
class WriteDataset:
    code: str
    used: dict[int, int] | None  # None: every round held so far, whole
    final: bool


@dataclass(frozen=True)
class CleanRounds:
    code: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class StopRounds:
    names: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class KillOrphans:
    rounds: tuple[tuple[str, int, int | None], ...]  # (name, pid, proc_start)


@dataclass(frozen=True)
class StopRun:
    reason: str


Effect = Union[Log, WriteDataset, CleanRounds, StopRounds, KillOrphans, StopRun]


@dataclass
class Tally:
    """Per-object sums kept up to date by set_round."""
    by_status: Counter = field(default_factory=Counter)
    accepted: int = 0  # accepted grasps of rounds that hold grasps
    produced: int = 0
    waiting: set[int] = field(default_factory=set)  # round ids to run


class State:
    def __init__(self, policy: Policy, identity: dict[str, Any], config: dict[str, Any],
                 created_at: float) -> None:
        self.policy, self.identity, self.config = policy, identity, config
        self.created_at = self.updated_at = created_at
        self.objects: dict[str, ObjectRecord] = {}
        self.runs: list[dict[str, Any]] = []
        self.gpus: dict[int, GpuRecord] = {}
        self.seq = 0  # the last journal event applied
        self.order: tuple[str, ...] = ()  # this run's objects
        self.active: dict[str, None] = {}  # this run's active objects, in list order
        self.tally: dict[str, Tally] = {}
        self.running: dict[str, tuple[str, int]] = {}  # round name -> (code, round_id)
        self.stopping: set[str] = set()  # useless rounds being stopped
        self.unwritten: Counter = Counter()  # code -> rounds held since final.npz was written
        self.written_rounds: Counter = Counter()
        self.objects_by_status: Counter = Counter()  # over this run's objects
        self.stats: Counter = Counter()  # this run: rounds_started, rounds_failed, ...
        self.failure_kinds: Counter = Counter()
        self.run_ok = 0  # rounds that produced grasps in this run
        self.fail_streak: list[str] = []  # objects of rounds failed in a row, run-wide
        self.dirty: set[str] = set()  # objects changed since the last snapshot
        # over every object: grasps counted and produced by rounds that hold grasps (the
        # yield of an object without its own rounds yet, with [validate]), rounds validating
        self.yield_counts = [0, 0]
        self.validating = 0
        self.validated_counts = [0, 0]  # [validate]: grasps passed, of those validated

    # -- the only assignment of statuses ------------------------------------------------
    def add_object(self, obj: ObjectRecord) -> None:
        self.objects[obj.code] = obj
        self.tally[obj.code] = t = Tally()
        for rnd in obj.rounds.values():
            self._count(t, rnd, +1)
        self.dirty.add(obj.code)

    def _count(self, t: Tally, rnd: RoundRecord, sign: int) -> None:
        t.by_status[rnd.status] += sign
        if rnd.status in HAS_GRASPS:
            t.accepted += sign * (self.grasps_of(rnd) or 0)
            t.produced += sign * (rnd.produced or 0)
            self.yield_counts[0] += sign * (self.grasps_of(rnd) or 0)
            self.yield_counts[1] += sign * (rnd.produced or 0)
            if rnd.passed is not None:
                self.validated_counts[0] += sign * rnd.passed
                self.validated_counts[1] += sign * (rnd.accepted or 0)
        elif rnd.status == R.VALIDATING:
            self.validating += sign
        if rnd.status in TO_RUN:
            (t.waiting.add if sign > 0 else t.waiting.discard)(rnd.round_id)

    def set_round(self, code: str, rnd: RoundRecord, status: RoundStatus, **values: Any) -> None:
        t, target = self.tally[code], self.objects[code].target
        before = min(t.accepted, target)
        self._count(t, rnd, -1)
        rnd.status = status
        for key, value in values.items():
            setattr(rnd, key, value)
        self._count(t, rnd, +1)
        if code in self.order_set:
            self.progress += min(t.accepted, target) - before
        if status == R.RUNNING:
            self.running[rnd.name] = (code, rnd.round_id)
        else:
            self.running.pop(rnd.name, None)
        self.dirty.add(code)

    def set_object(self, obj: ObjectRecord, status: ObjectStatus, reason: str | None) -> None:
        if obj.code in self.order_set:
            self.objects_by_status[obj.status] -= 1
            self.objects_by_status[status] += 1
            if status == O.ACTIVE:
                self._reactivate(obj.code)
            else:
                self.active.pop(obj.code, None)
        obj.status, obj.reason = status, reason
        self.dirty.add(obj.code)

    def _reactivate(self, code: str) -> None:
        # Keep list order: rebuilt (O(objects)) only on revival, which is rare.
        self.active[code] = None
        self.active = {c: None for c in self.order if c in self.active}

    def set_order(self, codes: Iterable[str]) -> None:
        self.order = tuple(codes)
        self.order_set = frozenset(self.order)
        self.active = {c: None for c in self.order if self.objects[c].status == O.ACTIVE}
        self.objects_by_status = Counter(self.objects[c].status for c in self.order)
        self.progress = sum(min(self.tally[c].accepted, self.objects[c].target)
                            for c in self.order)
        self.progress_target = sum(self.objects[c].target for c in self.order)

    order_set: frozenset[str] = frozenset()
    progress = 0  # accepted grasps of this run's objects, at most each target
    progress_target = 0

    # -- reading ---------------------------------------------------------------------
    def grasps_of(self, rnd: RoundRecord) -> int | None:
        """What a round adds to its dataset: its unique grasps once [dedup] has judged
        them, its accepted grasps before (and without dedup)."""
        if self.policy.dedup and rnd.unique is not None:
            return rnd.unique
        return rnd.passed if self.policy.validate else rnd.accepted

    def round_of(self, code: str, round_id: int) -> RoundRecord:
        return self.objects[code].rounds[round_id]

    def collected(self, code: str) -> int:
        """Accepted grasps of an object's rounds that hold them (in final.npz or not)."""
        return self.tally[code].accepted

    def expected_yield(self, code: str) -> float:
        """Grasps a round of ``code`` is expected to add: its rounds' yield so far; with
        [validate], before it has any, every object's (passing varies with the object,
        but less than between a guess and a measurement)."""
        t = self.tally[code]
        grasps, produced = (t.accepted, t.produced) if t.produced or not self.policy.validate \
            else self.yield_counts
        rate = grasps / produced if produced else 1.0
        return max(1.0, self.policy.batch_size * rate)

    def outstanding(self, code: str) -> int:
        by = self.tally[code].by_status
        return by[R.RUNNING] + by[R.PENDING] + by[R.INTERRUPTED] + by[R.VALIDATING]

    def new_rounds_wanted(self, code: str) -> int:
        obj = self.objects[code]
        remaining = obj.target - self.collected(code)
        if obj.status != O.ACTIVE or remaining <= 0:
            return 0
        needed = -(-remaining // self.expected_yield(code))
        return max(0, int(needed) - self.outstanding(code))

    def healthy_gpus(self) -> list[int]:
        return [g for g, r in self.gpus.items() if r.status == GpuStatus.HEALTHY]

    def healthy_failures(self, rnd: RoundRecord) -> int:
        """Failed attempts that count against the round: those on GPUs still healthy."""
        return sum(1 for f in rnd.failures if f.get("kind", "failed") == "failed"
                   and self._gpu_healthy(f.get("gpu")))

    def _gpu_healthy(self, gpu: int | None) -> bool:
        rec = self.gpus.get(gpu) if gpu is not None else None
        return rec is None or rec.status == GpuStatus.HEALTHY

    def settled(self) -> bool:
        return not self.active and not self.running

    def next_round_id(self, code: str) -> int:
        rounds = self.objects[code].rounds
        return max(rounds) + 1 if rounds else 0

    def add_round(self, code: str, rnd: RoundRecord) -> RoundRecord:
        self.objects[code].rounds[rnd.round_id] = rnd
        self._count(self.tally[code], rnd, +1)
        return rnd

