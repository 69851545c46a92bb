"""The state machine: ``apply(state, event) -> effects``, every transition of rounds,
objects and GPUs in one place.

Pure: it changes ``state`` (through ``State.set_round``/``set_object``) and returns what
the async shell must do. The same function replays the journal at start-up (effects
dropped), runs live in the merger, and drives resume, recover, status and --dry-run.
"""

from __future__ import annotations

from typing import Any, Callable

from supervisor.core import events as ev, slots
from supervisor.core.records import (
    HAS_GRASPS, GpuRecord, GpuStatus, ObjectRecord, ObjectStatus, RoundRecord, RoundStatus,
)
from supervisor.core.state import CleanRounds, Effect, Log, State, StopRun

from supervisor.core import health, packing, reconcile
from supervisor.core.lifecycle import fields, new_round, settle

R, O = RoundStatus, ObjectStatus


def apply(state: State, event: ev.Event) -> list[Effect]:
    """Record ``event`` in ``state``; return what the shell must do about it."""
    code = getattr(event, "code", None)
    if code is not None:  # the snapshot encodes this object again: no handler can forget
        state.dirty.add(code)
    return HANDLERS[type(event)](state, event)


# -- rounds ------------------------------------------------------------------------------
def round_started(state: State, e: ev.RoundStarted) -> list[Effect]:
    obj = state.objects[e.code]
    rnd = obj.rounds.get(e.round_id) or new_round(state, e.code, e.round_id)
    state.set_round(e.code, rnd, R.RUNNING, gpu=e.gpu, node=e.node, started_at=e.at,
                    attempts=rnd.attempts + 1, pid=None, proc_start=None, exit_code=None,
                    finished_at=None, job_id=None, device=None)
    state.stats["rounds_started"] += 1
    state.gpus.setdefault(e.gpu, GpuRecord(e.gpu, e.node))
    return []


def round_spawned(state: State, e: ev.RoundSpawned) -> list[Effect]:
    rnd = state.round_of(e.code, e.round_id)
    rnd.pid, rnd.proc_start = e.pid, e.proc_start
    return []


def round_placed(state: State, e: ev.RoundPlaced) -> list[Effect]:
    rnd = state.round_of(e.code, e.round_id)
    rnd.job_id = e.job_id
    if e.node is not None:
        rnd.node, rnd.device = e.node, e.gpu
    return []


def _where(rnd: RoundRecord) -> dict[str, Any]:
    """A scheduler's job id and node in a failure's record (nothing on one server)."""
    return {} if rnd.job_id is None else {"job_id": rnd.job_id, "node": rnd.node}


def _ended(state: State, code: str, rnd: RoundRecord, at: float, duration_s: float) -> None:
    state.stats["gpu_seconds"] += duration_s
    rnd.finished_at, rnd.pid, rnd.proc_start = at, None, None


def round_produced(state: State, e: ev.RoundProduced) -> list[Effect]:
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    _ended(state, e.code, rnd, e.at, e.duration_s)
    state.run_ok += 1
    state.fail_streak = []
    effects = health.gpu_succeeded(state, e.code, rnd)
    rec = state.gpus.get(rnd.gpu)
    if e.gpu_mib and rec is not None:  # the manifest and status show what a round takes
        rec.footprint_mib = max(rec.footprint_mib or 0, e.gpu_mib)
    values = dict(produced=e.produced, accepted=e.accepted, unique=None, exit_code=0,
                  reason=None)
    state.stopping.discard(rnd.name)
    if obj.status == O.DONE:
        state.set_round(e.code, rnd, R.DISCARDED, used=0, **values)
        return effects + [Log("round_discarded", {"reason": "object done",
                                                  **fields(state, e.code, rnd)}),
                          CleanRounds(e.code, (rnd.name,))]
    obj.consecutive_failures = 0 if obj.status == O.ACTIVE else obj.consecutive_failures
    if state.policy.validate:  # counted once validated (RoundValidated)
        state.set_round(e.code, rnd, R.VALIDATING, passed=None, failed_by=None,
                        validated_at=None, **values)
        return effects + settle(state, obj)
    return effects + _held(state, obj, rnd, values)


def _held(state: State, obj: ObjectRecord, rnd: RoundRecord,
          values: dict[str, Any]) -> list[Effect]:
    """The round's grasps count now (produced; with [validate]: validated)."""
    state.set_round(obj.code, rnd, R.FINISHED, **values)
    if obj.status != O.ACTIVE:  # kept: merged when the object is revived
        return [Log("round_kept", {"reason": f"object {obj.status}",
                                   **fields(state, obj.code, rnd)})]
    state.unwritten[obj.code] += 1
    return settle(state, obj)


def round_validated(state: State, e: ev.RoundValidated) -> list[Effect]:
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    if rnd.status != R.VALIDATING:  # not needed any more (its object was done)
        return []
    values = dict(passed=e.passed, failed_by=dict(e.failed_by), validated_at=e.at)
    failed = sum(e.failed_by.values())
    effects: list[Effect] = [Log("round_validated", {
        "validated": e.passed + failed, "passed": e.passed, "failed_by": dict(e.failed_by),
        **fields(state, e.code, rnd)})]
    if obj.status == O.DONE:
        state.set_round(e.code, rnd, R.DISCARDED, used=0, **values)
        return effects + [CleanRounds(e.code, (rnd.name,))]
    return effects + _held(state, obj, rnd, values)


def validation_stopped(state: State, e: ev.ValidationStopped) -> list[Effect]:
    if state.stats["run_stopped"]:
        return []
    state.stats["run_stopped"] = 1
    return [StopRun(e.reason)]


def round_deduped(state: State, e: ev.RoundDeduped) -> list[Effect]:
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    state.set_round(e.code, rnd, rnd.status, unique=e.unique)
    return settle(state, obj) if rnd.status == R.FINISHED else []


def round_failed(state: State, e: ev.RoundFailed, charge_gpu: bool = True) -> list[Effect]:
    """``charge_gpu``: the failure counts against its GPU's health (not when the round
    does not fit any card: that is the config's doing)."""
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    _ended(state, e.code, rnd, e.at, e.duration_s)
    rnd.failures.append({"attempt": rnd.attempts, "kind": "failed", "reason": e.reason,
                         "gpu": e.gpu, "exit_code": e.exit_code, "at": e.at,
                         "duration_s": round(e.duration_s, 3), **_where(rnd)})
    state.stats["rounds_failed"] += 1
    state.failure_kinds[e.reason.split(":")[0]] += 1
    state.stopping.discard(rnd.name)
    effects = health.gpu_failed(state, e.code, rnd, e.gpu, e.reason) if charge_gpu else []
    retry = state.healthy_failures(rnd) < state.policy.max_attempts
    effects.append(Log("round_failed", {
        "attempt": rnd.attempts, "reason": e.reason, "exit_code": e.exit_code,
        "will_retry": retry and obj.status == O.ACTIVE, **fields(state, e.code, rnd)},
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
                **fields(state, e.code, rnd)}))
    else:
        state.set_round(e.code, rnd, R.FAILED, reason=e.reason, exit_code=e.exit_code)
        if obj.status == O.ACTIVE:
            obj.consecutive_failures += 1
    return effects + health.all_failing(state) + settle(state, obj)


def round_interrupted(state: State, e: ev.RoundInterrupted) -> list[Effect]:
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    _ended(state, e.code, rnd, e.at, e.duration_s)
    rnd.failures.append({"attempt": rnd.attempts, "kind": "interrupted", "reason": e.reason,
                         "gpu": rnd.gpu, "exit_code": None, "at": e.at,
                         "duration_s": round(e.duration_s, 3), **_where(rnd)})
    useless = rnd.name in state.stopping
    state.stopping.discard(rnd.name)
    if obj.status == O.DONE:
        state.set_round(e.code, rnd, R.DISCARDED, reason="stopped: object done")
        return [Log("round_stopped", {"reason": "object done", **fields(state, e.code, rnd)}),
                CleanRounds(e.code, (rnd.name,))]
    state.set_round(e.code, rnd, R.INTERRUPTED, attempts=max(0, rnd.attempts - 1),
                    reason=e.reason)
    event = "round_stopped" if useless else "round_interrupted"
    return [Log(event, {"reason": e.reason, **fields(state, e.code, rnd)})]


def round_out_of_memory(state: State, e: ev.RoundOutOfMemory) -> list[Effect]:
    """Capacity, not failure: the round runs again (same name and seed, not counted), its
    card holds one round fewer. Only a round alone on a card that had the memory a round
    takes fails: the batch does not fit (and when it fits no card, the run stops)."""
    rec = health.record_of(state, e.gpu)
    assert rec is not None
    if not packing.is_capacity(e.alone, e.free_mib, e.estimate_mib):
        rec.ooms_alone += 1
        reason = (f"CUDA out of memory alone on {slots.label(e.gpu)}, which has {e.free_mib} "
                  f"MiB free for a round expected to take {e.estimate_mib} MiB: "
                  f"round_batch_size = {state.policy.batch_size} does not fit this card; "
                  f"lower round_batch_size ({e.reason})")
        effects = round_failed(state, ev.RoundFailed(e.code, e.round_id, e.gpu, reason, e.at,
                                                     e.duration_s, 1), charge_gpu=False)
        return effects + health.nothing_fits(state, reason)
    obj, rnd = state.objects[e.code], state.round_of(e.code, e.round_id)
    _ended(state, e.code, rnd, e.at, e.duration_s)
    rnd.failures.append({"attempt": rnd.attempts, "kind": "oom", "reason": e.reason,
                         "gpu": e.gpu, "exit_code": 1, "at": e.at,
                         "duration_s": round(e.duration_s, 3), **_where(rnd)})
    state.stats["rounds_out_of_memory"] += 1
    state.stopping.discard(rnd.name)
    effects: list[Effect] = [Log("round_out_of_memory", {
        "reason": e.reason, "alone": e.alone, "free_mib": e.free_mib,
        **fields(state, e.code, rnd)}, "warning")]
    if obj.status == O.DONE:
        state.set_round(e.code, rnd, R.DISCARDED, reason=e.reason)
        return effects + [CleanRounds(e.code, (rnd.name,))]
    state.set_round(e.code, rnd, R.INTERRUPTED, attempts=max(0, rnd.attempts - 1),
                    reason=e.reason)
    return effects + packing.out_of_memory(state, rec, e.at, e.duration_s)


def gpu_lost(state: State, e: ev.GpuLost) -> list[Effect]:
    rec = health.record_of(state, e.gpu)
    assert rec is not None
    if rec.status == GpuStatus.LOST:
        return []
    rec.status, rec.reason = GpuStatus.LOST, e.reason
    return [Log("gpu_lost", {**slots.fields(e.gpu), "reason": e.reason}, "warning")]


def gpu_added(state: State, e: ev.GpuAdded) -> list[Effect]:
    """A cluster GPU joined: new, or back after its worker was lost (a quarantined one
    stays quarantined for the run)."""
    rec = state.gpus.get(e.gpu)
    if rec is not None and rec.status != GpuStatus.LOST:
        return []
    state.gpus[e.gpu] = GpuRecord(e.gpu, slots.node(e.gpu))
    packing.start(state, state.gpus[e.gpu])
    return [Log("gpu_added", slots.fields(e.gpu))]


def dataset_written(state: State, e: ev.DatasetWritten) -> list[Effect]:
    obj = state.objects[e.code]
    obj.collected, obj.final_bytes, obj.final_mtime_ns = e.rows, e.final_bytes, e.final_mtime_ns
    obj.final_digest = e.digest
    effects: list[Effect] = []
    for rid, n in sorted(e.used.items()):
        rnd = obj.rounds[rid]
        if rnd.status == R.FINISHED:
            effects.append(Log("round_merged", {"accepted": rnd.accepted,
                                                "produced": rnd.produced, "collected": e.rows,
                                                **fields(state, e.code, rnd)}))
        if rnd.status in HAS_GRASPS:
            state.set_round(e.code, rnd, R.MERGED, used=n)
    state.unwritten[e.code] = 0
    state.written_rounds[e.code] = len(e.used)
    if obj.status == O.DONE and e.rows >= obj.target:
        effects.append(Log("object_done", {"object_code": e.code, "collected": e.rows,
                                           "rounds_used": sum(1 for n in e.used.values() if n),
                                           "last_round": max(e.used, default=None)}))
        names = tuple(r.name for r in obj.rounds.values() if r.status != R.RUNNING)
        effects.append(CleanRounds(e.code, names))
    return effects


HANDLERS: dict[type, Callable[[State, Any], list[Effect]]] = {
    ev.ObjectsRegistered: reconcile.objects_registered,
    ev.SupervisorStarted: reconcile.supervisor_started,
    ev.SupervisorStopped: reconcile.supervisor_stopped,
    ev.RoundStarted: round_started,
    ev.RoundSpawned: round_spawned,
    ev.RoundPlaced: round_placed,
    ev.RoundProduced: round_produced,
    ev.RoundDeduped: round_deduped,
    ev.RoundFailed: round_failed,
    ev.RoundInterrupted: round_interrupted,
    ev.RoundOutOfMemory: round_out_of_memory,
    ev.PackingMeasured: packing.measured,
    ev.GpuLost: gpu_lost,
    ev.NoCardFits: health.no_card_fits,
    ev.RunStuck: health.no_card_fits,
    ev.RoundValidated: round_validated,
    ev.ValidationStopped: validation_stopped,
    ev.GpuAdded: gpu_added,
    ev.DatasetWritten: dataset_written,
    ev.ObjectReloaded: reconcile.object_reloaded,
    ev.ObjectRecovered: reconcile.object_recovered,
    ev.DatasetLost: reconcile.dataset_lost,
}
