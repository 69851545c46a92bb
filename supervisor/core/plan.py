"""The plan: round names, seeds, when an object's dataset is complete, and which round a
free GPU should run next.

Pure functions over the state's records and counters; picking is O(1) amortised: only
this run's active objects are looked at, in list order, and the scan stops at the first
that wants a round (the ones before it already have every round they can use).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection

from supervisor.core.health import suspect
from supervisor.core.slots import GpuKey
from supervisor.core.records import HAS_GRASPS, GpuStatus, ObjectRecord, RoundStatus
from supervisor.core.state import State

# Seeds are seed_base + object_index * SEED_STRIDE + round_id: round ids must stay below it.
SEED_STRIDE = 100_000
MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which main.py uses, takes seeds < 2**32


def round_name(exp_name: str, object_code: str, round_id: int) -> str:
    return f"{exp_name}__{object_code}__r{round_id}"


def round_seed(seed_base: int, object_index: int, round_id: int) -> int:
    if not 0 <= round_id < SEED_STRIDE:
        raise ValueError(f"round_id must be in [0, {SEED_STRIDE}), got {round_id}")
    seed = seed_base + object_index * SEED_STRIDE + round_id
    if seed > MAX_SEED:
        raise ValueError(f"seed {seed} is above {MAX_SEED}: lower seed_base")
    return seed


@dataclass(frozen=True)
class Completion:
    done: bool
    last_round: int | None  # the round that completes the quota
    used: dict[int, int]  # round_id -> grasps of it in the dataset


def completion(obj: ObjectRecord, dedup: bool = False, validate: bool = False) -> Completion:
    """The dataset is the first ``target`` accepted (with [validate]: passed; with
    [dedup]: unique) grasps in round order.

    An object is done once every round up to the one that reaches the target has produced
    grasps or failed for good: a round still running below it could change the content.
    With dedup a round counts once it has been judged (its earlier rounds all settled).
    """
    total = 0
    used: dict[int, int] = {}
    for rid in sorted(obj.rounds):
        rnd = obj.rounds[rid]
        if rnd.status in (RoundStatus.FAILED, RoundStatus.DISCARDED):
            continue
        count = rnd.unique if dedup else rnd.passed if validate else rnd.accepted
        if rnd.status not in HAS_GRASPS or count is None:
            return Completion(False, None, used)
        take = min(count, obj.target - total)
        used[rid] = take
        total += take
        if total >= obj.target:
            return Completion(True, rid, used)
    return Completion(False, None, used)


def first_rows(held: dict[int, int], target: int) -> dict[int, int]:
    """Rows per round of a dataset that holds at most ``target`` grasps: the first ones
    in (round_id, item_index) order of ``held`` (round id -> grasps held)."""
    used: dict[int, int] = {}
    total = 0
    for rid in sorted(held):
        if total >= target:
            break
        # A round whose grasps were all filtered or duplicates adds none, and is merged.
        used[rid] = take = min(held[rid], target - total)
        total += take
    return used


@dataclass(frozen=True)
class Pick:
    object_code: str
    round_id: int
    new: bool


def allowed_on(state: State, failed_on: set[int], gpu: int,
               closed: Collection[GpuKey] = ()) -> bool:
    """A retry goes to a GPU it has not failed on whenever a healthy one exists that can
    take a round, even if that means waiting for our own rounds there to end; never for
    one that cannot (``closed``: another user's job holds its memory), which may be for
    ever."""
    if gpu not in failed_on:
        return True
    return not any(g not in failed_on and g not in closed for g in state.healthy_gpus())


def failed_on(state: State, code: str, round_id: int) -> set[int]:
    rnd = state.round_of(code, round_id)
    return {f["gpu"] for f in rnd.failures if f.get("gpu") is not None
            and f.get("kind", "failed") in ("failed", "oom")}


def pick(state: State, gpu: GpuKey, closed: Collection[GpuKey] = ()) -> Pick | None:
    """The next round to start on ``gpu``: objects in list order, retries first.

    Earlier objects get every round their remaining quota can use; later ones fill GPUs
    the earlier ones cannot use. ``closed``: GPUs that could not take a round even once
    our rounds there end (``GpuPool.closed``): a retry does not wait for them.
    """
    if state.gpus.get(gpu) and state.gpus[gpu].status != GpuStatus.HEALTHY:
        return None
    if suspect(state, gpu):
        return None
    for code in state.active:
        for rid in sorted(state.tally[code].waiting):
            if allowed_on(state, failed_on(state, code, rid), gpu, closed):
                return Pick(code, rid, new=False)
        rid = state.next_round_id(code)
        if rid < state.policy.max_rounds and state.new_rounds_wanted(code) > 0:
            return Pick(code, rid, new=True)
    return None


def stuck(state: State, gpus: Collection[GpuKey], closed: Collection[GpuKey] = ()) -> str | None:
    """Why the run can never go on: no round of ours runs (nothing will change) and no
    GPU of ``gpus`` (the healthy ones) has a round to take, though objects are unfinished;
    else None. A safety net: in a run it means a bug."""
    if state.running or state.validating or state.settled() or \
            any(pick(state, g, closed) for g in gpus):
        return None
    waiting = [f"{code} r{rid}" for code in state.active
               for rid in sorted(state.tally[code].waiting)][:5]
    return (f"no round can start on any GPU and none is running, with "
            f"{len(state.active)} object(s) unfinished"
            + (f" (waiting: {', '.join(waiting)})" if waiting else "")
            + ": this is a bug; the experiment resumes where it stopped")


def rounds_to_go(state: State, code: str) -> int:
    obj = state.objects[code]
    if obj.status != "active":
        return 0
    remaining = max(0, obj.target - state.collected(code))
    return -(-remaining // int(state.expected_yield(code))) if remaining else 0
