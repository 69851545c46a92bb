"""The state machine: ``apply(state, event) -> effects``, every transition of rounds,
objects and GPUs in one place.

Pure: it changes ``state`` (through ``State.set_round``/``set_object``) and returns what
the async shell must do. The same function replays the journal at start-up (effects
dropped), runs live in the merger, and drives resume, recover, status and --dry-run.
"""

from __future__ import annotations

from typing import Any, Callable

from supervisor import events as ev, plan
from supervisor.records import (
    HAS_GRASPS, TO_RUN, GpuRecord, GpuStatus, ObjectRecord, ObjectStatus, RoundRecord,
    RoundStatus,
)
from supervisor.state import (
    CleanRounds, Effect, KillOrphans, Log, State, StopRounds, StopRun, WriteDataset,
)

R, O = RoundStatus, ObjectStatus
REASONS_KEPT = 5


def apply(state: State, event: ev.Event) -> list[Effect]:
    """Record ``event`` in ``state``; return what the shell must do about it."""
    return HANDLERS[type(event)](state, event)


def _new_round(state: State, code: str, round_id: int) -> RoundRecord:
    p, obj = state.policy, state.objects[code]
    return state.add_round(code, RoundRecord(
        round_id, plan.round_name(p.exp_name, code, round_id),
        plan.round_seed(p.seed_base, obj.index, round_id)))


def _fields(state: State, code: str, rnd: RoundRecord) -> dict[str, Any]:
    return {"round": rnd.name, "object_code": code, "gpu": rnd.gpu,
            **({"node": rnd.node} if rnd.node else {})}


# -- start-up ----------------------------------------------------------------------------
def objects_registered(state: State, e: ev.ObjectsRegistered) -> list[Effect]:
    effects: list[Effect] = []
    next_index = max((o.index for o in state.objects.values()), default=-1) + 1
    for code in e.codes:
        obj = state.objects.get(code)
        if obj is None:
            state.add_object(ObjectRecord(code, next_index, e.target))
            next_index += 1
            continue
        if e.target > obj.target or obj.status in (O.FAILED, O.EXHAUSTED):
            obj.target = max(obj.target, e.target)
            if obj.status != O.ACTIVE:
                obj.status, obj.consecutive_failures, obj.reason = O.ACTIVE, 0, None
                effects.append(Log("object_revived", {"object_code": code}))
            state.dirty.add(code)
    state.set_order(e.codes)
    return effects


def supervisor_started(state: State, e: ev.SupervisorStarted) -> list[Effect]:
    """Rounds a dead supervisor left behind run again; their process groups are killed."""
    state.runs.append({"pid": e.pid, "host": e.host, "argv": list(e.argv),
                       "started_at": e.at, "cwd": e.cwd, "env": dict(e.env)})
    state.stats.clear()
    state.failure_kinds.clear()
    state.run_ok, state.fail_streak = 0, []
    state.gpus = {g: GpuRecord(g) for g in e.gpus}
    orphans = []
    for code, obj in state.objects.items():
        for rnd in obj.rounds.values():
            if rnd.pid is not None:
                orphans.append((rnd.name, rnd.pid, rnd.proc_start))
            if rnd.status == R.RUNNING:
                state.set_round(code, rnd, R.INTERRUPTED, attempts=max(0, rnd.attempts - 1),
                                pid=None, proc_start=None)
            elif rnd.pid is not None:
                rnd.pid = rnd.proc_start = None
                state.dirty.add(code)
    state.stopping.clear()
    return [KillOrphans(tuple(orphans))] if orphans else []


def supervisor_stopped(state: State, e: ev.SupervisorStopped) -> list[Effect]:
    if state.runs:
        state.runs[-1].update(ended_at=e.at, exit_code=e.exit_code)
    return []


# -- rounds ------------------------------------------------------------------------------
def round_started(state: State, e: ev.RoundStarted) -> list[Effect]:
    obj = state.objects[e.code]
    rnd = obj.rounds.get(e.round_id) or _new_round(state, e.code, e.round_id)
    state.set_round(e.code, rnd, R.RUNNING, gpu=e.gpu, node=e.node, started_at=e.at,
                    attempts=rnd.attempts + 1, pid=None, proc_start=None, exit_code=None,
                    finished_at=None)
    state.stats["rounds_started"] += 1
    state.gpus.setdefault(e.gpu, GpuRecord(e.gpu, e.node))
    return []


def round_spawned(state: State, e: ev.RoundSpawned) -> list[Effect]:
    rnd = state.round_of(e.code, e.round_id)
    rnd.pid, rnd.proc_start = e.pid, e.proc_start
    state.dirty.add(e.code)
    return []


def _ended(state: State, code: str, rnd: RoundRecord, at: float, duration_s: float) -> None:
    state.stats["gpu_seconds"] += duration_s
    rnd.finished_at, rnd.pid, rnd.proc_start = at, None, None


def round_produced(state: State, e: ev.RoundProduced) -> list[Effect]:
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    _ended(state, e.code, rnd, e.at, e.duration_s)
    state.run_ok += 1
    state.fail_streak = []
    effects = _gpu_succeeded(state, e.code, rnd)
    values = dict(produced=e.produced, accepted=e.accepted, exit_code=0, reason=None)
    state.stopping.discard(rnd.name)
    if obj.status == O.DONE:
        state.set_round(e.code, rnd, R.DISCARDED, used=0, **values)
        return effects + [Log("round_discarded", {"reason": "object done",
                                                  **_fields(state, e.code, rnd)}),
                          CleanRounds(e.code, (rnd.name,))]
    state.set_round(e.code, rnd, R.FINISHED, **values)
    if obj.status != O.ACTIVE:  # kept: merged when the object is revived
        return effects + [Log("round_kept", {"reason": f"object {obj.status}",
                                             **_fields(state, e.code, rnd)})]
    obj.consecutive_failures = 0
    state.unwritten[e.code] += 1
    return effects + settle(state, obj)


def round_failed(state: State, e: ev.RoundFailed) -> list[Effect]:
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    _ended(state, e.code, rnd, e.at, e.duration_s)
    rnd.failures.append({"attempt": rnd.attempts, "kind": "failed", "reason": e.reason,
                         "gpu": e.gpu, "exit_code": e.exit_code, "at": e.at,
                         "duration_s": round(e.duration_s, 3)})
    state.stats["rounds_failed"] += 1
    state.failure_kinds[e.reason.split(":")[0]] += 1
    state.stopping.discard(rnd.name)
    effects = _gpu_failed(state, e.code, rnd, e.gpu, e.reason)
    retry = state.healthy_failures(rnd) < state.policy.max_attempts
    effects.append(Log("round_failed", {
        "attempt": rnd.attempts, "reason": e.reason, "exit_code": e.exit_code,
        "will_retry": retry and obj.status == O.ACTIVE, **_fields(state, e.code, rnd)},
        "warning"))
    if obj.status == O.DONE:
        state.set_round(e.code, rnd, R.DISCARDED, reason=e.reason, exit_code=e.exit_code)
        return effects + [CleanRounds(e.code, (rnd.name,))]
    if retry:
        state.set_round(e.code, rnd, R.PENDING, reason=e.reason, exit_code=e.exit_code)
        if obj.status == O.ACTIVE:
            state.stats["rounds_retried"] += 1
            effects.append(Log("round_retry", {
                "attempt": rnd.attempts + 1, "max_attempts": state.policy.max_attempts,
                **_fields(state, e.code, rnd)}))
    else:
        state.set_round(e.code, rnd, R.FAILED, reason=e.reason, exit_code=e.exit_code)
        if obj.status == O.ACTIVE:
            obj.consecutive_failures += 1
    return effects + _all_failing(state) + settle(state, obj)


def round_interrupted(state: State, e: ev.RoundInterrupted) -> list[Effect]:
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    _ended(state, e.code, rnd, e.at, e.duration_s)
    rnd.failures.append({"attempt": rnd.attempts, "kind": "interrupted", "reason": e.reason,
                         "gpu": rnd.gpu, "exit_code": None, "at": e.at,
                         "duration_s": round(e.duration_s, 3)})
    useless = rnd.name in state.stopping
    state.stopping.discard(rnd.name)
    if obj.status == O.DONE:
        state.set_round(e.code, rnd, R.DISCARDED, reason=f"stopped: object done")
        return [Log("round_stopped", {"reason": "object done", **_fields(state, e.code, rnd)}),
                CleanRounds(e.code, (rnd.name,))]
    state.set_round(e.code, rnd, R.INTERRUPTED, attempts=max(0, rnd.attempts - 1),
                    reason=e.reason)
    event = "round_stopped" if useless else "round_interrupted"
    return [Log(event, {"reason": e.reason, **_fields(state, e.code, rnd)})]


# -- GPU health --------------------------------------------------------------------------
def _gpu(state: State, gpu: int | None) -> GpuRecord | None:
    return None if gpu is None else state.gpus.setdefault(gpu, GpuRecord(gpu))


def _gpu_succeeded(state: State, code: str, rnd: RoundRecord) -> list[Effect]:
    rec = _gpu(state, rnd.gpu)
    if rec is not None:
        rec.rounds_ok += 1
        rec.streak, rec.streak_rounds = 0, []
    effects: list[Effect] = []
    # A round that failed on another GPU and now succeeded here: that GPU was at fault.
    for other in state.gpus.values():
        if other is not rec and (code, rnd.round_id) in other.streak_rounds:
            effects += _maybe_quarantine(state, other, succeeded_elsewhere=True)
    return effects


def _gpu_failed(state: State, code: str, rnd: RoundRecord, gpu: int | None,
                reason: str) -> list[Effect]:
    state.fail_streak.append(code)
    rec = _gpu(state, gpu)
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


def _all_failing(state: State) -> list[Effect]:
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


def gpu_lost(state: State, e: ev.GpuLost) -> list[Effect]:
    rec = _gpu(state, e.gpu)
    assert rec is not None
    if rec.status == GpuStatus.LOST:
        return []
    rec.status, rec.reason = GpuStatus.LOST, e.reason
    return [Log("gpu_lost", {"gpu": e.gpu, "reason": e.reason}, "warning")]


# -- objects -----------------------------------------------------------------------------
def settle(state: State, obj: ObjectRecord) -> list[Effect]:
    """Decide whether ``obj`` is done, failed or exhausted after a change."""
    if obj.status != O.ACTIVE:
        return []
    comp = plan.completion(obj)
    if comp.done:
        return _complete(state, obj, comp)
    if obj.consecutive_failures >= state.policy.max_consecutive_failed_rounds:
        return _give_up(state, obj, O.FAILED,
                        f"{obj.consecutive_failures} consecutive rounds failed")
    if state.next_round_id(obj.code) >= state.policy.max_rounds and not state.outstanding(
            obj.code):
        return _give_up(state, obj, O.EXHAUSTED,
                        f"max_rounds = {state.policy.max_rounds} reached")
    if _stride_due(state, obj.code):
        return [WriteDataset(obj.code, None, final=False)]
    return []


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
        if rnd.status in HAS_GRASPS and rid > comp.last_round:
            state.set_round(obj.code, rnd, R.DISCARDED, used=0)
            effects.append(Log("round_discarded", {"reason": "object done",
                                                   **_fields(state, obj.code, rnd)}))
        elif rnd.status in TO_RUN:
            state.set_round(obj.code, rnd, R.DISCARDED, reason="not needed: object done")
    state.set_object(obj, O.DONE, None)
    running = tuple(n for n, (c, _) in state.running.items() if c == obj.code)
    state.stopping.update(running)
    if running:
        effects.append(StopRounds(running, "object done"))
    return effects + [WriteDataset(obj.code, dict(comp.used), final=True)]


def dataset_written(state: State, e: ev.DatasetWritten) -> list[Effect]:
    obj = state.objects[e.code]
    obj.collected, obj.final_bytes, obj.final_mtime_ns = e.rows, e.final_bytes, e.final_mtime_ns
    effects: list[Effect] = []
    for rid, n in sorted(e.used.items()):
        rnd = obj.rounds[rid]
        if rnd.status == R.FINISHED:
            effects.append(Log("round_merged", {"accepted": rnd.accepted,
                                                "produced": rnd.produced, "collected": e.rows,
                                                **_fields(state, e.code, rnd)}))
        if rnd.status in HAS_GRASPS:
            state.set_round(e.code, rnd, R.MERGED, used=n)
    state.unwritten[e.code] = 0
    state.written_rounds[e.code] = len(e.used)
    state.dirty.add(e.code)
    if obj.status == O.DONE and e.rows >= obj.target:
        effects.append(Log("object_done", {"object_code": e.code, "collected": e.rows,
                                           "rounds_used": sum(1 for n in e.used.values() if n),
                                           "last_round": max(e.used, default=None)}))
        names = tuple(r.name for r in obj.rounds.values() if r.status != R.RUNNING)
        effects.append(CleanRounds(e.code, names))
    return effects


def object_reloaded(state: State, e: ev.ObjectReloaded) -> list[Effect]:
    """Reconcile an unfinished object with its files (resume): rounds in final.npz are
    merged, rounds re-read from their folders are held, the rest run again."""
    obj = state.objects[e.code]
    for rid, n in e.in_final.items():
        rnd = obj.rounds[rid]
        if rnd.status not in HAS_GRASPS:
            state.set_round(e.code, rnd, R.MERGED, accepted=n, produced=rnd.produced or n)
    for rnd in obj.rounds.values():
        if rnd.status not in (*HAS_GRASPS, R.DISCARDED) or rnd.accepted is None:
            if rnd.status == R.DISCARDED:
                state.set_round(e.code, rnd, R.PENDING)
            continue
        have = e.in_final.get(rnd.round_id, 0)
        if have == rnd.accepted:
            state.set_round(e.code, rnd, R.MERGED, used=have)
        elif rnd.round_id in e.from_folders:
            produced, accepted = e.from_folders[rnd.round_id]
            state.set_round(e.code, rnd, R.FINISHED, produced=produced, accepted=accepted)
        elif have:
            # Part of it is in final.npz (the object was done, its target then raised, and
            # its folder is gone): keep what was merged, never rerun over it.
            state.set_round(e.code, rnd, R.MERGED, accepted=have, used=have)
        else:
            state.set_round(e.code, rnd, R.PENDING, produced=None, accepted=None, used=None,
                            reason=f"grasps not in final.npz and "
                                   f"{e.missing.get(rnd.round_id, 'no result')}; running it again")
    obj.collected = sum(e.in_final.values())
    state.unwritten[e.code] = sum(1 for r in obj.rounds.values() if r.status == R.FINISHED)
    state.written_rounds[e.code] = len(e.in_final)
    if obj.status == O.DONE:  # killed between deciding it done and writing final.npz
        state.set_object(obj, O.ACTIVE, None)
    return settle(state, obj)


def object_recovered(state: State, e: ev.ObjectRecovered) -> list[Effect]:
    """Rebuild an object from its files alone (recover, after the manifest was lost)."""
    obj = ObjectRecord(e.code, e.index, e.target)
    state.add_object(obj)
    ids = set(e.in_final) | set(e.from_folders) | set(e.folders)
    delivered = sum(e.in_final.values()) >= e.target
    for rid in range(max(ids, default=-1) + 1):
        rnd = _new_round(state, e.code, rid)
        if rid in e.in_final:
            n = e.in_final[rid]
            produced, accepted = e.from_folders.get(rid, (n, n))
            state.set_round(e.code, rnd, R.MERGED, produced=produced, accepted=accepted,
                            used=n)
        elif delivered:
            # Delivered rows never change: a round of a done object that is not in its
            # final.npz failed or was not needed, and is never run again.
            state.set_round(e.code, rnd, R.DISCARDED,
                            reason="recover: not in the delivered final.npz")
        elif rid in e.from_folders:
            produced, accepted = e.from_folders[rid]
            state.set_round(e.code, rnd, R.FINISHED, produced=produced, accepted=accepted)
    obj.collected = sum(e.in_final.values())
    state.written_rounds[e.code] = len(e.in_final)
    if delivered:
        obj.status = O.DONE
    return []


def dataset_lost(state: State, e: ev.DatasetLost) -> list[Effect]:
    """final.npz was unreadable and moved aside (recover): reopen the object so that
    resume reloads its rounds from their folders or reruns them with the same seeds."""
    obj = state.objects[e.code]
    obj.status, obj.reason = O.ACTIVE, None
    obj.collected, obj.final_bytes, obj.final_mtime_ns = 0, None, None
    state.dirty.add(e.code)
    return [Log("object_reopened", {"object_code": e.code, "reason": e.reason})]


HANDLERS: dict[type, Callable[[State, Any], list[Effect]]] = {
    ev.ObjectsRegistered: objects_registered,
    ev.SupervisorStarted: supervisor_started,
    ev.SupervisorStopped: supervisor_stopped,
    ev.RoundStarted: round_started,
    ev.RoundSpawned: round_spawned,
    ev.RoundProduced: round_produced,
    ev.RoundFailed: round_failed,
    ev.RoundInterrupted: round_interrupted,
    ev.GpuLost: gpu_lost,
    ev.DatasetWritten: dataset_written,
    ev.ObjectReloaded: object_reloaded,
    ev.ObjectRecovered: object_recovered,
    ev.DatasetLost: dataset_lost,
}
