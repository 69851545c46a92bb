"""GPU health: failures are attributed to GPUs; a GPU failing K rounds in a row while
others succeed is quarantined; every GPU failing every object stops the run. Part of
the state machine (see transitions)."""

from __future__ import annotations


from supervisor.records import (
    GpuRecord, GpuStatus, ObjectStatus, RoundRecord,
    RoundStatus,
)
from supervisor.state import (
    Effect, Log, State, StopRun,
)

R, O = RoundStatus, ObjectStatus
REASONS_KEPT = 5


def record_of(state: State, gpu: int | None) -> GpuRecord | None:
    return None if gpu is None else state.gpus.setdefault(gpu, GpuRecord(gpu))


def gpu_succeeded(state: State, code: str, rnd: RoundRecord) -> list[Effect]:
    rec = record_of(state, rnd.gpu)
    if rec is not None:
        rec.rounds_ok += 1
        rec.streak, rec.streak_rounds = 0, []
    effects: list[Effect] = []
    # A round that failed on another GPU and now succeeded here: that GPU was at fault.
    for other in state.gpus.values():
        if other is not rec and (code, rnd.round_id) in other.streak_rounds:
            effects += _maybe_quarantine(state, other, succeeded_elsewhere=True)
    return effects


def gpu_failed(state: State, code: str, rnd: RoundRecord, gpu: int | None,
                reason: str) -> list[Effect]:
    state.fail_streak.append(code)
    rec = record_of(state, gpu)
    if rec is None:
        return []
    rec.rounds_failed += 1
    rec.streak += 1
    rec.streak_rounds.append((code, rnd.round_id))
    rec.reasons = (rec.reasons + [reason])[-REASONS_KEPT:]
    return _maybe_quarantine(state, rec, succeeded_elsewhere=False)


def _maybe_quarantine(state: State, rec: GpuRecord, succeeded_elsewhere: bool) -> list[Effect]:
    """K rounds in a row failed on ``rec`` while rounds succeed on other GPUs: take it out.

    A streak of one object only (a broken mesh fails everywhere) does not count unless
    one of its rounds then succeeded on another GPU.
    """
    k = state.policy.quarantine_after
    others_ok = any(g.rounds_ok for g in state.gpus.values()
                    if g is not rec and g.status == GpuStatus.HEALTHY)
    varied = len({c for c, _ in rec.streak_rounds}) > 1 or succeeded_elsewhere
    if rec.status != GpuStatus.HEALTHY or rec.streak < k or not others_ok or not varied:
        return []
    rec.status = GpuStatus.QUARANTINED
    rec.reason = f"{rec.streak} rounds in a row failed on it while other GPUs succeeded"
    effects: list[Effect] = [Log("gpu_quarantined", {
        "gpu": rec.gpu, **({"node": rec.node} if rec.node else {}), "reason": rec.reason,
        "reasons": list(rec.reasons)}, "error")]
    # Its failures no longer count against rounds and objects: give them back.
    for code, rid in rec.streak_rounds:
        obj, rnd = state.objects[code], state.round_of(code, rid)
        if rnd.status == R.FAILED and state.healthy_failures(rnd) < state.policy.max_attempts:
            state.set_round(code, rnd, R.PENDING)
            obj.consecutive_failures = max(0, obj.consecutive_failures - 1)
            if obj.status == O.FAILED and code in state.order_set:
                state.set_object(obj, O.ACTIVE, None)
                effects.append(Log("object_revived", {"object_code": code,
                                                      "reason": f"GPU {rec.gpu} quarantined"}))
    rec.streak_rounds = []
    return effects


def all_failing(state: State) -> list[Effect]:
    """Every GPU fails every object: stop with one error instead of burning max_rounds."""
    healthy = len(state.healthy_gpus()) or 1
    streak = state.fail_streak
    objects = set(streak)
    enough = len(streak) >= state.policy.quarantine_after * healthy
    if state.run_ok or not enough or len(objects) < min(2, len(state.order)) \
            or state.stats["run_stopped"]:
        return []
    state.stats["run_stopped"] = 1
    return [StopRun(f"the last {len(streak)} rounds failed on every GPU ({healthy}) for "
                    f"{len(objects)} objects and none succeeded in this run: the command, "
                    f"its working folder or its environment is broken")]
