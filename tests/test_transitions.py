"""The state machine, by plain function calls: each case is a sequence of events and
what must hold after it. Several are the defects the old five-place state handling had.
"""

from __future__ import annotations

from typing import Any

import pytest

from supervisor.core import events as ev, plan
from supervisor.core.records import GpuStatus, ObjectStatus as O, RoundStatus as R
from supervisor.core.state import (
    CleanRounds, KillOrphans, Log, Policy, State, StopRounds, StopRun, WriteDataset,
)
from supervisor.core.transitions import apply

T = 1000.0


def new(codes=("a",), target=8, gpus=(0, 1, 2), **policy: Any) -> State:
    state = State(Policy("e", batch_size=4, **policy), {}, {}, T)
    apply(state, ev.ObjectsRegistered(tuple(codes), target))
    apply(state, ev.SupervisorStarted(1, "h", (), T, gpus=tuple(gpus)))
    return state


def start(state: State, code: str, rid: int, gpu: int) -> None:
    apply(state, ev.RoundStarted(code, rid, gpu, T))


def ok(state: State, code: str, rid: int, accepted: int = 4) -> list:
    return apply(state, ev.RoundProduced(code, rid, 4, accepted, T, 1.0))


def fail(state: State, code: str, rid: int, gpu: int, reason: str = "exit code 1") -> list:
    return apply(state, ev.RoundFailed(code, rid, gpu, reason, T, 1.0, 1))


def logs(effects: list, name: str) -> list[dict]:
    return [e.fields for e in effects if isinstance(e, Log) and e.event == name]


def test_every_status_change_keeps_the_counters_true() -> None:
    state = new(codes=("a", "b"), target=8)
    start(state, "a", 0, 0)
    start(state, "a", 1, 1)
    ok(state, "a", 1, accepted=3)
    fail(state, "a", 0, 0)
    for code, obj in state.objects.items():
        t = state.tally[code]
        assert sum(t.by_status.values()) == len(obj.rounds)
        assert t.accepted == sum(r.accepted or 0 for r in obj.rounds.values()
                                 if r.status in (R.FINISHED, R.MERGED))
        assert t.waiting == {r.round_id for r in obj.rounds.values()
                             if r.status in (R.PENDING, R.INTERRUPTED)}
    assert state.progress == 3 and set(state.running) == set()


def test_retry_waits_for_another_healthy_gpu_rather_than_its_failed_one() -> None:
    state = new(gpus=(0, 1), target=12)
    start(state, "a", 0, 0)
    start(state, "a", 1, 1)
    fail(state, "a", 0, 0)
    # GPU 0 is free, GPU 1 busy: the retry of r0 is not offered to GPU 0; a new round is.
    assert plan.pick(state, 0) == plan.Pick("a", 2, new=True)
    assert plan.pick(state, 1) == plan.Pick("a", 0, new=False)


def test_a_retry_does_not_wait_for_a_card_that_cannot_take_a_round() -> None:
    """GPU 1 is "closed" (another user's job holds its memory, GpuPool.closed): the retry
    of a round that failed on GPU 0 may run there again rather than wait for ever."""
    state = new(gpus=(0, 1), target=4)
    start(state, "a", 0, 0)
    fail(state, "a", 0, 0)
    assert plan.pick(state, 0) is None  # waits for GPU 1...
    assert plan.pick(state, 1) == plan.Pick("a", 0, new=False)
    assert plan.pick(state, 0, closed={1}) == plan.Pick("a", 0, new=False)  # ...unless closed
    assert plan.pick(state, 0, closed={0}) is None  # its own card closed: still GPU 1


def test_stuck_only_when_nothing_runs_and_no_gpu_has_a_round() -> None:
    state = new(gpus=(0, 1), target=4)
    assert plan.stuck(state, [0, 1]) is None  # a round for either GPU
    start(state, "a", 0, 0)
    assert plan.stuck(state, []) is None  # a round runs: its end changes things
    fail(state, "a", 0, 0)
    assert plan.stuck(state, [0, 1]) is None
    assert plan.stuck(state, []) == (
        "no round can start on any GPU and none is running, with 1 object(s) unfinished "
        "(waiting: a r0): this is a bug; the experiment resumes where it stopped")


def test_failures_on_a_gpu_that_is_quarantined_do_not_count_against_objects() -> None:
    state = new(codes=("a", "b", "c"), target=100, quarantine_after=3, max_attempts=1,
                max_consecutive_failed_rounds=2)
    start(state, "c", 0, 1)
    ok(state, "c", 0)  # rounds succeed elsewhere
    effects = []
    for code in ("a", "b", "a"):
        rid = state.next_round_id(code)
        start(state, code, rid, 0)
        effects += fail(state, code, rid, 0)
    quarantined = logs(effects, "gpu_quarantined")
    assert quarantined and quarantined[0]["gpu"] == 0
    assert state.gpus[0].status == GpuStatus.QUARANTINED
    # The rounds get their attempts back and the objects stay active.
    assert all(state.objects[c].status == O.ACTIVE for c in ("a", "b"))
    assert state.round_of("a", 0).status == R.PENDING and plan.pick(state, 0) is None
    assert plan.pick(state, 2) == plan.Pick("a", 0, new=False)


def test_a_broken_object_failing_on_every_gpu_does_not_quarantine_them() -> None:
    state = new(codes=("bad", "good"), target=100, quarantine_after=2, max_attempts=1,
                max_consecutive_failed_rounds=3)
    start(state, "good", 0, 2)
    ok(state, "good", 0)
    for rid, gpu in enumerate((0, 0, 1)):
        start(state, "bad", rid, gpu)
        fail(state, "bad", rid, gpu, "exit code 1: No mesh found")
    assert all(g.status == GpuStatus.HEALTHY for g in state.gpus.values())
    assert state.objects["bad"].status == O.FAILED
    assert state.objects["good"].status == O.ACTIVE


def test_every_gpu_failing_every_object_stops_the_run() -> None:
    state = new(codes=("a", "b"), target=100, quarantine_after=2, max_attempts=3)
    effects = []
    for i, (code, gpu) in enumerate([("a", 0), ("b", 1), ("a", 2), ("b", 0), ("a", 1),
                                     ("b", 2)]):
        rid = state.next_round_id(code)
        start(state, code, rid, gpu)
        effects += fail(state, code, rid, gpu)
    stops = [e for e in effects if isinstance(e, StopRun)]
    assert stops and "none succeeded" in stops[0].reason


def test_rounds_made_useless_by_completion_are_stopped_and_recorded() -> None:
    state = new(target=4)
    start(state, "a", 0, 0)
    start(state, "a", 1, 1)
    effects = ok(state, "a", 0)
    assert [e for e in effects if isinstance(e, StopRounds)][0].names == ("e__a__r1",)
    assert [e for e in effects if isinstance(e, WriteDataset)][0].used == {0: 4}
    effects = apply(state, ev.RoundInterrupted("a", 1, "stopped", T, 0.5))
    assert state.round_of("a", 1).status == R.DISCARDED
    assert any(isinstance(e, CleanRounds) for e in effects)


def test_a_round_failing_for_good_after_its_object_is_done_is_cleaned() -> None:
    state = new(target=4, max_attempts=1)
    start(state, "a", 0, 0)
    start(state, "a", 1, 1)
    ok(state, "a", 0)
    effects = fail(state, "a", 1, 1)
    assert state.round_of("a", 1).status == R.DISCARDED
    assert any(isinstance(e, CleanRounds) and "e__a__r1" in e.names for e in effects)


def test_valid_grasps_arriving_after_the_object_failed_are_kept() -> None:
    state = new(target=100, max_attempts=1, max_consecutive_failed_rounds=1)
    start(state, "a", 0, 0)
    start(state, "a", 1, 1)
    effects = fail(state, "a", 0, 0)
    assert state.objects["a"].status == O.FAILED
    assert any(isinstance(e, StopRounds) for e in effects)
    effects = ok(state, "a", 1)
    assert state.round_of("a", 1).status == R.FINISHED  # kept for a revival
    assert not any(isinstance(e, CleanRounds) for e in effects)


def test_object_done_is_logged_after_its_last_round_merged() -> None:
    state = new(target=4)
    start(state, "a", 0, 0)
    ok(state, "a", 0)
    effects = apply(state, ev.DatasetWritten("a", {0: 4}, 4, 10, 20))
    names = [e.event for e in effects if isinstance(e, Log)]
    assert names == ["round_merged", "object_done"]


def test_restart_interrupts_running_rounds_and_asks_to_kill_their_groups() -> None:
    state = new()
    start(state, "a", 0, 0)
    apply(state, ev.RoundSpawned("a", 0, 4242, 99))
    effects = apply(state, ev.SupervisorStarted(2, "h", (), T, gpus=(0,)))
    assert effects == [KillOrphans((("e__a__r0", 4242, 99),))]
    rnd = state.round_of("a", 0)
    assert rnd.status == R.INTERRUPTED and rnd.attempts == 0 and rnd.pid is None


def test_recover_never_changes_a_delivered_dataset() -> None:
    """Round r1 had failed for good; final.npz holds r0, r2..r5. Recover must not plan r1."""
    state = State(Policy("e", batch_size=5), {}, {}, T)
    apply(state, ev.ObjectRecovered("a", 0, 25, {0: 5, 2: 5, 3: 5, 4: 5, 5: 5}, {}, ()))
    apply(state, ev.ObjectsRegistered(("a",), 25))
    assert state.objects["a"].status == O.DONE
    assert state.round_of("a", 1).status == R.DISCARDED
    assert plan.pick(state, 0) is None


@pytest.mark.parametrize("stride,writes", [(None, [1, 2, 4]), (1, [1, 2, 3, 4, 5, 6, 7]),
                                           (3, [3, 6])])
def test_merge_stride_schedule(stride: int | None, writes: list[int]) -> None:
    state = new(target=1000, merge_stride=stride)
    seen = []
    for rid in range(7):
        start(state, "a", rid, 0)
        if any(isinstance(e, WriteDataset) for e in ok(state, "a", rid)):
            seen.append(rid + 1)
            apply(state, ev.DatasetWritten("a", {r: 4 for r in range(rid + 1)}, 4 * (rid + 1),
                                           1, 1))
    assert seen == writes


def test_journal_lines_round_trip() -> None:
    for event in (ev.ObjectReloaded("a", {0: 3}, {1: (4, 2)}, {2: "gone"}),
                  ev.DatasetWritten("a", {0: 3, 1: 2}, 5, 10, 11),
                  ev.SupervisorStarted(1, "h", ("x",), T, "/c", {"A": "1"}, (0, 1))):
        seq, back = ev.decode(ev.encode(7, event))
        assert seq == 7 and back == event


def test_quota_met_on_the_last_allowed_round_is_done_not_exhausted() -> None:
    """Found by a new user: with [dedup], the last allowed round reached the target
    before it was judged; the object was marked exhausted and final.npz got every row."""
    state = new(target=6, max_rounds=2, dedup=True)
    start(state, "a", 0, 0)
    ok(state, "a", 0, accepted=4)
    apply(state, ev.RoundDeduped("a", 0, 4))
    start(state, "a", 1, 0)
    effects = ok(state, "a", 1, accepted=4)  # 8 held >= 6, r1 not judged yet
    assert state.objects["a"].status == O.ACTIVE and not logs(effects, "object_failed")
    effects = apply(state, ev.RoundDeduped("a", 1, 3))
    assert state.objects["a"].status == O.DONE
    assert [e for e in effects if isinstance(e, WriteDataset)] == [
        WriteDataset("a", {0: 4, 1: 2}, final=True)]


def test_failures_never_beat_a_quota_that_the_held_grasps_meet() -> None:
    state = new(target=6, max_consecutive_failed_rounds=1, max_attempts=1, dedup=True)
    start(state, "a", 0, 0)
    ok(state, "a", 0, accepted=4)
    apply(state, ev.RoundDeduped("a", 0, 4))
    start(state, "a", 1, 0)
    start(state, "a", 2, 1)
    ok(state, "a", 2, accepted=4)  # held 8: the quota is met once r1 settles
    fail(state, "a", 1, 0)  # r1 failed for good: one failure is the limit
    assert state.objects["a"].status == O.ACTIVE
    effects = apply(state, ev.RoundDeduped("a", 2, 4))
    assert state.objects["a"].status == O.DONE
    assert WriteDataset("a", {0: 4, 2: 2}, final=True) in effects


def test_too_few_grasps_after_judging_is_exhausted() -> None:
    state = new(target=6, max_rounds=2, dedup=True)
    for rid in (0, 1):
        start(state, "a", rid, 0)
        ok(state, "a", rid, accepted=4)
    apply(state, ev.RoundDeduped("a", 0, 4))
    effects = apply(state, ev.RoundDeduped("a", 1, 1))  # 5 unique < 6, no round left
    assert state.objects["a"].status == O.EXHAUSTED
    assert logs(effects, "object_failed")[0]["collected"] == 5


@pytest.mark.parametrize("held,target,expected", [
    ({0: 4, 1: 4, 2: 4}, 10, {0: 4, 1: 4, 2: 2}),
    ({2: 4, 0: 4}, 4, {0: 4}),
    ({0: 3}, 10, {0: 3}),
    ({}, 5, {}),
    ({0: 3, 1: 0, 2: 5}, 100, {0: 3, 1: 0, 2: 5}),  # a round that kept no grasp: go on past it
    ({0: 3, 1: 0, 2: 5}, 3, {0: 3}),
])
def test_first_rows_never_exceed_the_target(held, target, expected) -> None:
    assert plan.first_rows(held, target) == expected
