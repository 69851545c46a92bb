from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from supervisor.core import plan
from supervisor.core.records import ObjectRecord, RoundRecord, RoundStatus

FAILED, FINISHED, MERGED, PENDING, RUNNING = (
    RoundStatus.FAILED, RoundStatus.FINISHED, RoundStatus.MERGED, RoundStatus.PENDING,
    RoundStatus.RUNNING)


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


def test_round_seed_rejects_round_ids_that_would_collide_or_overflow() -> None:
    with pytest.raises(ValueError):
        plan.round_seed(0, 0, 100000)
    with pytest.raises(ValueError, match="lower seed_base"):
        plan.round_seed(2**32 - 10, 0, 20)


def obj(target: int, *rounds: tuple[str, int | None, int | None]) -> ObjectRecord:
    o = ObjectRecord("o", 0, target)
    for rid, (status, produced, accepted) in enumerate(rounds):
        o.rounds[rid] = RoundRecord(rid, f"r{rid}", rid, status=status, produced=produced,
                                    accepted=accepted)
    return o


def test_completion_waits_for_every_earlier_round() -> None:
    o = obj(6, (RUNNING, None, None), (FINISHED, 4, 4), (FINISHED, 4, 4))
    assert not plan.completion(o).done
    o.rounds[0].status, o.rounds[0].produced, o.rounds[0].accepted = FINISHED, 4, 3
    comp = plan.completion(o)
    assert comp.done and comp.last_round == 1 and comp.used == {0: 3, 1: 3}


def test_completion_skips_failed_rounds() -> None:
    comp = plan.completion(obj(5, (FAILED, None, None), (MERGED, 4, 4), (MERGED, 4, 4)))
    assert comp.done and comp.last_round == 2 and comp.used == {1: 4, 2: 1}


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
