"""[validate] in the state machine, by plain function calls: a produced round counts only
once validated, by its grasps that passed; the plan counts rounds being validated as on
their way, at the yield measured so far (the object's own, else every object's)."""

from __future__ import annotations

from supervisor.core import events as ev, plan
from supervisor.core.records import ObjectStatus as O, RoundStatus as R
from supervisor.core.state import CleanRounds, Log, StopRun, WriteDataset
from supervisor.core.transitions import apply

from test_transitions import T, new, ok, start


def validated(state, code: str, rid: int, passed: int, **failed: int) -> list:
    return apply(state, ev.RoundValidated(code, rid, passed, failed, T + 5))


def test_a_round_counts_once_validated_and_by_what_passed() -> None:
    state = new(target=6, validate=True)
    start(state, "a", 0, 0)
    assert ok(state, "a", 0) == []
    rnd = state.round_of("a", 0)
    assert rnd.status == R.VALIDATING and state.collected("a") == 0
    assert state.validating == 1 and state.outstanding("a") == 1
    # on its way at the yield assumed before any was measured: one round of 4 is out,
    # the quota of 6 needs one more
    assert state.new_rounds_wanted("a") == 1
    effects = validated(state, "a", 0, 1, penetration=2, translation=1)
    assert rnd.status == R.FINISHED and (rnd.passed, rnd.failed_by) == (1, {
        "penetration": 2, "translation": 1})
    assert state.collected("a") == 1 and state.validating == 0
    log = [e for e in effects if isinstance(e, Log) and e.event == "round_validated"][0]
    assert log.fields["validated"] == 4 and log.fields["passed"] == 1
    # measured: a quarter of a round passes, 5 to go: 5 rounds
    assert state.expected_yield("a") == 1.0 and state.new_rounds_wanted("a") == 5


def test_an_object_is_done_by_passed_grasps_and_rounds_being_validated_past_it_go() -> None:
    state = new(target=4, validate=True)
    for rid in range(3):
        start(state, "a", rid, rid)
        ok(state, "a", rid)
    validated(state, "a", 1, 4)
    assert state.objects["a"].status == O.ACTIVE  # round 0 is not validated yet
    effects = validated(state, "a", 0, 2, rotation=2)
    assert state.objects["a"].status == O.DONE
    write = [e for e in effects if isinstance(e, WriteDataset)][0]
    assert write.used == {0: 2, 1: 2} and write.final
    assert state.round_of("a", 2).status == R.DISCARDED  # being validated, not needed
    assert validated(state, "a", 2, 4) == []  # its result, late: nothing changes
    assert state.round_of("a", 2).status == R.DISCARDED and state.validating == 0


def test_an_object_without_rounds_of_its_own_is_planned_at_every_objects_yield() -> None:
    state = new(codes=("a", "b"), target=8, validate=True)
    start(state, "a", 0, 0)
    ok(state, "a", 0)
    validated(state, "a", 0, 1, penetration=3)  # a quarter passes
    assert state.expected_yield("b") == 1.0  # a's, not the optimistic whole round
    assert state.new_rounds_wanted("b") == 8
    without = new(codes=("a", "b"), target=8)  # no [validate]: as before, a round each
    start(without, "a", 0, 0)
    ok(without, "a", 0, accepted=1)
    assert without.expected_yield("b") == 4.0


def test_an_object_whose_grasps_never_pass_stops_at_max_rounds_saying_why() -> None:
    state = new(target=4, validate=True, max_rounds=2)
    effects = []
    for rid in range(2):
        start(state, "a", rid, rid)
        ok(state, "a", rid)
        effects += validated(state, "a", rid, 0, penetration=3, diverged=1)
    assert state.objects["a"].status == O.EXHAUSTED
    failed = [e for e in effects if isinstance(e, Log) and e.event == "object_failed"][0]
    assert failed.fields["reason"] == ("max_rounds = 2 reached: 0 of 8 validated grasps "
                                       "passed (0.0%); failed: penetration 6, diverged 2")


def test_a_validator_that_keeps_failing_stops_the_run_once() -> None:
    state = new(validate=True)
    start(state, "a", 0, 0)
    ok(state, "a", 0)
    stop = apply(state, ev.ValidationStopped("a", 0, "the validator crashed 3 times"))
    assert stop == [StopRun("the validator crashed 3 times")]
    assert apply(state, ev.ValidationStopped("a", 0, "again")) == []
    assert state.round_of("a", 0).status == R.VALIDATING  # nothing unvalidated merged


def test_resume_validates_again_what_was_being_validated_or_reruns_it() -> None:
    state = new(target=8, validate=True)
    for rid in range(2):
        start(state, "a", rid, rid)
        ok(state, "a", rid)
    apply(state, ev.ObjectReloaded("a", {}, {0: (4, 4)}, {1: "no result file"},
                                   validating=(0,)))
    assert state.round_of("a", 0).status == R.VALIDATING
    rerun = state.round_of("a", 1)
    assert rerun.status == R.PENDING and "not validated and no result file" in rerun.reason
    assert plan.stuck(state, []) is None  # a round being validated: something will change


def test_a_round_of_a_done_object_is_discarded_when_validated() -> None:
    state = new(target=4, validate=True)
    start(state, "a", 0, 0)
    start(state, "a", 1, 1)
    ok(state, "a", 0)
    validated(state, "a", 0, 4)
    assert state.objects["a"].status == O.DONE
    effects = ok(state, "a", 1)  # finished after the object was done
    assert state.round_of("a", 1).status == R.DISCARDED
    assert any(isinstance(e, CleanRounds) for e in effects)
