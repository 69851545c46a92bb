from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from supervisor import plan
from supervisor.manifest import (
    ACTIVE, DONE, EXHAUSTED, FAILED, FINISHED, MERGED, OBJ_FAILED, PENDING, RUNNING,
    ObjectRecord, RoundRecord,
)


@pytest.mark.parametrize("exp,code,rid,name", [
    ("exp", "mug", 0, "exp__mug__r0"),
    ("e1", "core-bottle-1a7b", 12, "e1__core-bottle-1a7b__r12"),
])
def test_round_name(exp: str, code: str, rid: int, name: str) -> None:
    assert plan.round_name(exp, code, rid) == name


@pytest.mark.parametrize("base,index,rid,seed", [
    (0, 0, 0, 0), (0, 1, 0, 100000), (7, 2, 3, 200010), (1000, 0, 99999, 100999),
])
def test_round_seed(base: int, index: int, rid: int, seed: int) -> None:
    assert plan.round_seed(base, index, rid) == seed


def test_round_seed_rejects_round_ids_that_would_collide() -> None:
    with pytest.raises(ValueError):
        plan.round_seed(0, 0, 100000)


def obj(target: int, *rounds: tuple[str, int | None, int | None]) -> ObjectRecord:
    o = ObjectRecord("o", 0, target)
    for rid, (status, produced, accepted) in enumerate(rounds):
        o.rounds[rid] = RoundRecord(rid, f"r{rid}", rid, status=status, produced=produced,
                                    accepted=accepted)
    return o


def test_new_rounds_count_in_flight_rounds_at_expected_yield() -> None:
    assert plan.new_rounds_wanted(obj(10), batch_size=4) == 3
    assert plan.new_rounds_wanted(obj(10, (RUNNING, None, None)), 4) == 2
    # Half the grasps pass: 8 - 4 = 4 remaining need 2 rounds of expected yield 2.
    o = obj(8, (MERGED, 4, 2), (FINISHED, 4, 2))
    assert plan.acceptance_rate(o) == 0.5
    assert plan.new_rounds_wanted(o, 4) == 2
    assert plan.new_rounds_wanted(obj(4, (MERGED, 4, 4)), 4) == 0


def test_completion_waits_for_every_earlier_round() -> None:
    o = obj(6, (RUNNING, None, None), (FINISHED, 4, 4), (FINISHED, 4, 4))
    assert not plan.completion(o).done
    o.rounds[0].status, o.rounds[0].produced, o.rounds[0].accepted = FINISHED, 4, 3
    comp = plan.completion(o)
    assert comp.done and comp.last_round == 1 and comp.used == {0: 3, 1: 3}


def test_completion_skips_failed_rounds() -> None:
    comp = plan.completion(obj(5, (FAILED, None, None), (MERGED, 4, 4), (MERGED, 4, 4)))
    assert comp.done and comp.last_round == 2 and comp.used == {1: 4, 2: 1}


def test_settle_statuses() -> None:
    assert plan.settle(obj(4, (MERGED, 4, 4)), 10, 3) == DONE
    failing = obj(4, (FAILED, None, None))
    failing.consecutive_failures = 3
    assert plan.settle(failing, 10, 3) == OBJ_FAILED
    assert plan.settle(obj(9, (MERGED, 4, 4), (MERGED, 4, 4)), 2, 3) == EXHAUSTED
    assert plan.settle(obj(9, (MERGED, 4, 4), (RUNNING, None, None)), 2, 3) == ACTIVE


def test_pick_serves_objects_in_order_and_retries_first() -> None:
    a, b = obj(4, (RUNNING, None, None)), obj(8)
    a.code, b.code = "a", "b"
    assert plan.pick_next([a, b], 4, 10) == plan.Pick("b", 0, new=True)
    a.rounds[0].status = PENDING
    assert plan.pick_next([a, b], 4, 10) == plan.Pick("a", 0, new=False)
    a.status = DONE
    b.rounds[0] = RoundRecord(0, "x", 0, status=RUNNING)
    assert plan.pick_next([a, b], 4, 10) == plan.Pick("b", 1, new=True)
    b.rounds[1] = RoundRecord(1, "y", 1, status=RUNNING)
    assert plan.pick_next([a, b], 4, 10) is None
    assert plan.pick_next([obj(100)], 4, 0) is None


@given(
    target=st.integers(1, 50),
    accepted=st.lists(st.one_of(st.none(), st.integers(0, 8)), min_size=1, max_size=12),
)
def test_completion_dataset_is_exactly_the_target(target: int, accepted: list) -> None:
    rounds = [(FAILED, None, None) if a is None else (MERGED, 8, a) for a in accepted]
    comp = plan.completion(obj(target, *rounds))
    total = sum(a for a in accepted if a is not None)
    assert comp.done == (total >= target)
    if comp.done:
        assert sum(comp.used.values()) == target
        assert all(rid <= comp.last_round for rid in comp.used)
