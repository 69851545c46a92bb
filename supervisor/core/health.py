"""GPU health: failures are attributed to GPUs; a GPU failing K rounds in a row while
others succeed is quarantined; every GPU failing every object stops the run. Part of
the state machine (see transitions)."""

from __future__ import annotations


from supervisor.core import slots
from supervisor.core.events import NoCardFits, RunStuck
from supervisor.core.records import (
    GpuRecord, GpuStatus, ObjectStatus, RoundRecord, RoundStatus,
)
from supervisor.core.state import Effect, Log, State, StopRun

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
    # Rounds succeed here now: a GPU that failed K in a row meanwhile is at fault, all
    # the more if this very round had failed there.
    for other in list(state.gpus.values()):
        if other is not rec and other.streak >= state.policy.quarantine_after:
            mine = (code, rnd.round_id) in other.streak_rounds
            effects += _maybe_quarantine(state, other, succeeded_elsewhere=mine)
    return effects


def suspect(state: State, gpu: int) -> bool:
    """A GPU that failed K rounds in a row before any other GPU succeeded: nobody can
    tell yet whether the rounds or the card are at fault. It takes no new round while
    another healthy GPU may still tell (has not failed K in a row), so that a card that
    fails fast cannot burn through the plan; once another GPU succeeds it is quarantined
    or cleared, and if every GPU fails, all_failing stops the run."""
    rec = state.gpus.get(gpu)
    k = state.policy.quarantine_after
    if rec is None or rec.status != GpuStatus.HEALTHY or rec.streak < k:
        return False
    others = [r for g, r in state.gpus.items() if g != gpu and r.status == GpuStatus.HEALTHY]
    return not any(r.rounds_ok for r in others) and any(r.streak < k for r in others)


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
    if not state.policy.quarantine:
        return []
    others_ok = any(g.rounds_ok for g in state.gpus.values()
                    if g is not rec and g.status == GpuStatus.HEALTHY)
    varied = len({c for c, _ in rec.streak_rounds}) > 1 or succeeded_elsewhere
    if rec.status != GpuStatus.HEALTHY or rec.streak < k or not others_ok or not varied:
        return []
    rec.status = GpuStatus.QUARANTINED
    rec.reason = f"{rec.streak} rounds in a row failed on it while other GPUs succeeded"
    effects: list[Effect] = [Log("gpu_quarantined", {
        **slots.fields(rec.gpu), "reason": rec.reason,
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
    """Every GPU fails every object: stop with one error instead of burning max_rounds.

    Every healthy GPU must have failed its last K rounds (one card failing fast is not
    "every GPU"), over more than one object, and nothing may have succeeded in this run.
    """
    k = state.policy.quarantine_after
    gpus = [state.gpus[g] for g in state.healthy_gpus()]
    healthy = len(gpus) or 1
    streak = state.fail_streak
    objects = set(streak)
    every_gpu = all(r.streak >= k for r in gpus)
    if state.run_ok or not every_gpu or len(objects) < min(2, len(state.order)) \
            or state.stats["run_stopped"]:
        return []
    state.stats["run_stopped"] = 1
    return [StopRun(f"the last {len(streak)} rounds failed on every GPU ({healthy}) for "
                    f"{len(objects)} objects and none succeeded in this run: the command, "
                    f"its working folder or its environment is broken")]


def nothing_fits(state: State, reason: str) -> list[Effect]:
    """A round alone on a card with the memory a round takes ran out of memory
    ``max_attempts`` times on every healthy card: the batch fits none, stop the run."""
    gpus = [state.gpus[g] for g in state.healthy_gpus()]
    if not gpus or state.stats["run_stopped"] or \
            any(r.ooms_alone < state.policy.max_attempts for r in gpus):
        return []
    state.stats["run_stopped"] = 1
    return [StopRun(f"every GPU ran out of memory {state.policy.max_attempts} times with a "
                    f"round alone on it: {reason}")]


def no_card_fits(state: State, e: NoCardFits | RunStuck) -> list[Effect]:
    """No card could take one round even when empty, or no GPU has a round to take and
    nothing runs: stop the run (it would wait for ever), with the reason the dispatcher
    found."""
    if state.stats["run_stopped"]:
        return []
    state.stats["run_stopped"] = 1
    return [StopRun(e.reason)]
