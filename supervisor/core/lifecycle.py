"""An object's life: when it is done, failed or exhausted, and when its final.npz is
due; the helpers the transitions share. Part of the state machine (see transitions)."""

from __future__ import annotations

from typing import Any

from supervisor.core import plan, slots
from supervisor.core.records import (
    HAS_GRASPS, TO_RUN, ObjectRecord, ObjectStatus, RoundRecord, RoundStatus, validated,
)
from supervisor.core.state import Effect, Log, State, StopRounds, WriteDataset

R, O = RoundStatus, ObjectStatus


def new_round(state: State, code: str, round_id: int) -> RoundRecord:
    p, obj = state.policy, state.objects[code]
    return state.add_round(code, RoundRecord(
        round_id, plan.round_name(p.exp_name, code, round_id),
        plan.round_seed(p.seed_base, obj.index, round_id)))


def fields(state: State, code: str, rnd: RoundRecord) -> dict[str, Any]:
    out = {"round": rnd.name, "object_code": code, **slots.fields(rnd.gpu)}
    if rnd.job_id is not None:  # a scheduler's job: where it ran, not the place it took
        out["job_id"] = rnd.job_id
        if rnd.device is not None:
            out.update(node=rnd.node, gpu=rnd.device)
    return out


def settle(state: State, obj: ObjectRecord) -> list[Effect]:
    """Decide whether ``obj`` is done, failed or exhausted after a change."""
    if obj.status != O.ACTIVE:
        return []
    # Cheap test first: the grasps held (the tally) must reach the target for the
    # dataset to be complete, so the O(rounds) walk runs only near the end.
    if state.collected(obj.code) >= obj.target:
        comp = plan.completion(obj, state.policy.dedup, state.policy.validate)
        if comp.done:
            return _complete(state, obj, comp)
        # The grasps held meet the quota once the rounds below settle ([dedup]: once
        # they are judged): meeting it wins over max_rounds and failures, which only
        # stop new rounds, and none is wanted now.
        return [WriteDataset(obj.code, None, final=False)] if _stride_due(state, obj.code) \
            else []
    if obj.consecutive_failures >= state.policy.max_consecutive_failed_rounds:
        return _give_up(state, obj, O.FAILED,
                        f"{obj.consecutive_failures} consecutive rounds failed")
    if state.next_round_id(obj.code) >= state.policy.max_rounds and not state.outstanding(
            obj.code):
        return _give_up(state, obj, O.EXHAUSTED,
                        f"max_rounds = {state.policy.max_rounds} reached" + _passing(obj)
                        if state.policy.validate else
                        f"max_rounds = {state.policy.max_rounds} reached")
    if _stride_due(state, obj.code):
        return [WriteDataset(obj.code, None, final=False)]
    return []


def _passing(obj: ObjectRecord) -> str:
    """``: 12 of 4096 validated grasps passed (0.3 %); failed: penetration 3900, ...``"""
    checked, passed, reasons = validated(obj)
    if not checked:
        return ": no grasp was validated"
    why = ", ".join(f"{k or 'rejected'} {n}" for k, n in
                    sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
    return (f": {passed} of {checked} validated grasps passed ({passed / checked:.1%})"
            + (f"; failed: {why}" if why else ""))


def _stride_due(state: State, code: str) -> bool:
    held = state.unwritten[code]
    stride = state.policy.merge_stride
    return held > 0 and held >= (stride or max(1, state.written_rounds[code]))


def _give_up(state: State, obj: ObjectRecord, status: ObjectStatus, reason: str) -> list[Effect]:
    state.set_object(obj, status, reason)
    running = tuple(n for n, (c, _) in state.running.items() if c == obj.code)
    state.stopping.update(running)
    effects: list[Effect] = [Log("object_failed", {
        "object_code": obj.code, "status": status.value, "reason": reason,
        "collected": state.collected(obj.code), "target": obj.target}, "error")]
    return effects + ([StopRounds(running, f"object {status.value}")] if running else [])


def _complete(state: State, obj: ObjectRecord, comp: plan.Completion) -> list[Effect]:
    effects: list[Effect] = []
    assert comp.last_round is not None
    for rid, rnd in obj.rounds.items():
        if rnd.status in (*HAS_GRASPS, R.VALIDATING) and rid > comp.last_round:
            state.set_round(obj.code, rnd, R.DISCARDED, used=0)
            effects.append(Log("round_discarded", {"reason": "object done",
                                                   **fields(state, obj.code, rnd)}))
        elif rnd.status in TO_RUN:
            state.set_round(obj.code, rnd, R.DISCARDED, reason="not needed: object done")
    state.set_object(obj, O.DONE, None)
    running = tuple(n for n, (c, _) in state.running.items() if c == obj.code)
    state.stopping.update(running)
    if running:
        effects.append(StopRounds(running, "object done"))
    return effects + [WriteDataset(obj.code, dict(comp.used), final=True)]


