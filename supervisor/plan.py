"""The plan: round names, seeds, and which object needs how many more rounds.

Pure functions over the manifest's records; the dispatcher and the merger call them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from supervisor.config import SEED_STRIDE
from supervisor.manifest import (
    ACTIVE, DISCARDED, DONE, EXHAUSTED, FAILED, HAS_GRASPS, IN_FLIGHT, OBJ_FAILED, TO_RUN,
    ObjectRecord, RoundRecord,
)


def round_name(exp_name: str, object_code: str, round_id: int) -> str:
    return f"{exp_name}__{object_code}__r{round_id}"


def round_seed(seed_base: int, object_index: int, round_id: int) -> int:
    if not 0 <= round_id < SEED_STRIDE:
        raise ValueError(f"round_id must be in [0, {SEED_STRIDE}), got {round_id}")
    return seed_base + object_index * SEED_STRIDE + round_id


def collected(obj: ObjectRecord) -> int:
    """Accepted grasps of rounds that produced them, merged into final.npz or not yet."""
    return sum(r.accepted or 0 for r in obj.rounds.values() if r.status in HAS_GRASPS)


def acceptance_rate(obj: ObjectRecord) -> float | None:
    produced = sum(r.produced or 0 for r in obj.rounds.values() if r.status in HAS_GRASPS)
    if produced == 0:
        return None
    return collected(obj) / produced


def expected_yield(obj: ObjectRecord, batch_size: int) -> float:
    """Grasps a round is expected to add: the batch at the acceptance rate seen so far.

    At least one grasp, so that an object whose rounds all got rejected so far still
    asks for rounds (bounded by max_rounds and the failure limits).
    """
    rate = acceptance_rate(obj)
    return max(1.0, batch_size * (1.0 if rate is None else rate))


def outstanding(obj: ObjectRecord) -> list[RoundRecord]:
    return [r for r in obj.rounds.values() if r.status in IN_FLIGHT or r.status in TO_RUN]


def new_rounds_wanted(obj: ObjectRecord, batch_size: int) -> int:
    """Rounds to start beyond those in flight or waiting, counted at their expected yield."""
    if obj.status != ACTIVE:
        return 0
    remaining = obj.target - collected(obj)
    if remaining <= 0:
        return 0
    needed = math.ceil(remaining / expected_yield(obj, batch_size))
    return max(0, needed - len(outstanding(obj)))


@dataclass(frozen=True)
class Completion:
    done: bool
    last_round: int | None  # the round that completes the quota
    used: dict[int, int]  # round_id -> grasps of it in the dataset


def completion(obj: ObjectRecord) -> Completion:
    """The dataset is the first ``target`` accepted grasps in round order.

    An object is done once every round up to the one that reaches the target has produced
    grasps or failed for good: a round still running below it could change the content.
    """
    total = 0
    used: dict[int, int] = {}
    for rid in sorted(obj.rounds):
        rnd = obj.rounds[rid]
        if rnd.status in (FAILED, DISCARDED):
            continue
        if rnd.status not in HAS_GRASPS:
            return Completion(False, None, used)
        take = min(rnd.accepted or 0, obj.target - total)
        used[rid] = take
        total += take
        if total >= obj.target:
            return Completion(True, rid, used)
    return Completion(False, None, used)


def next_round_id(obj: ObjectRecord) -> int:
    return max(obj.rounds, default=-1) + 1


def settle(obj: ObjectRecord, max_rounds: int, max_consecutive_failed: int) -> str:
    """The object's status once a round of it has been settled."""
    if obj.status != ACTIVE:
        return obj.status
    if completion(obj).done:
        return DONE
    if obj.consecutive_failures >= max_consecutive_failed:
        return OBJ_FAILED
    if next_round_id(obj) >= max_rounds and not outstanding(obj):
        return EXHAUSTED
    return ACTIVE


@dataclass(frozen=True)
class Pick:
    object_code: str
    round_id: int
    new: bool


def pick_next(objects: Iterable[ObjectRecord], batch_size: int, max_rounds: int) -> Pick | None:
    """The next round to start: objects in list order, retries before new rounds.

    Earlier objects get every round their remaining quota can use; later ones fill GPUs
    the earlier ones cannot use.
    """
    for obj in objects:
        if obj.status != ACTIVE:
            continue
        waiting = sorted(r.round_id for r in obj.rounds.values() if r.status in TO_RUN)
        if waiting:
            return Pick(obj.code, waiting[0], new=False)
        rid = next_round_id(obj)
        if rid < max_rounds and new_rounds_wanted(obj, batch_size) > 0:
            return Pick(obj.code, rid, new=True)
    return None


def terminal(status: str) -> bool:
    return status in (DONE, OBJ_FAILED, EXHAUSTED)

