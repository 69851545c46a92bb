"""Transitions of start-up, resume and recover: objects registered, a supervisor
(re)started or stopped, an object reconciled with its files or rebuilt from them. Part
of the state machine (see transitions)."""

from __future__ import annotations


from supervisor.core import events as ev, packing, slots
from supervisor.core.records import (
    HAS_GRASPS, GpuRecord, ObjectRecord, ObjectStatus, RoundStatus,
)
from supervisor.core.state import Effect, KillOrphans, Log, State

R, O = RoundStatus, ObjectStatus
from supervisor.core.lifecycle import new_round, settle


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
                obj.consecutive_failures = 0
                state.set_object(obj, O.ACTIVE, None)
                effects.append(Log("object_revived", {"object_code": code}))
            state.dirty.add(code)
    state.set_order(e.codes)
    return effects


def supervisor_started(state: State, e: ev.SupervisorStarted) -> list[Effect]:
    """Rounds a dead supervisor left behind run again; their process groups are killed."""
    state.runs.append({"pid": e.pid, "host": e.host, "argv": list(e.argv),
                       "started_at": e.at, "cwd": e.cwd, "env": dict(e.env),
                       **({"validator": dict(e.validator)} if e.validator else {})})
    state.stats.clear()
    state.failure_kinds.clear()
    state.run_ok, state.fail_streak = 0, []
    # Health is per run; what packing learned of a card stays (a resumed run starts there),
    # and so does the largest memory a round took there.
    learned = state.gpus
    state.gpus = {g: GpuRecord(g, slots.node(g)) for g in e.gpus}
    for g, rec in state.gpus.items():
        old = learned.get(g)
        if old is not None:
            rec.footprint_mib = old.footprint_mib
        if old is not None and state.policy.packing:
            rec.level, rec.gains, rec.rates = old.level, dict(old.gains), dict(old.rates)
            rec.sharing = dict(old.sharing)
            rec.retest_at, rec.backoffs = old.retest_at, old.backoffs
            rec.retest_from, rec.worse = old.retest_from, dict(old.worse)
        packing.start(state, rec)
    orphans = []
    for code, obj in state.objects.items():
        for rnd in obj.rounds.values():
            if rnd.pid is not None and rnd.node is None:  # a node's pid is not ours to
                orphans.append((rnd.name, rnd.pid, rnd.proc_start))  # kill: Ray ended it
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


def _passed(state: State, n: int) -> dict[str, int]:
    """[validate]: a round known only from final.npz passed what final.npz holds of it."""
    return {"passed": n} if state.policy.validate else {}


def object_reloaded(state: State, e: ev.ObjectReloaded) -> list[Effect]:
    """Reconcile an unfinished object with its files (resume): rounds in final.npz are
    merged, rounds re-read from their folders are held, the rest run again."""
    obj = state.objects[e.code]
    for rid, n in e.in_final.items():
        rnd = obj.rounds[rid]
        if rnd.status not in HAS_GRASPS:
            state.set_round(e.code, rnd, R.MERGED, accepted=n, unique=n, **_passed(state, n),
                            produced=rnd.produced or n)
    for rnd in obj.rounds.values():
        if rnd.round_id in e.validating:  # [validate]: re-read, to validate (again)
            produced, accepted = e.from_folders[rnd.round_id]
            state.set_round(e.code, rnd, R.VALIDATING, produced=produced, accepted=accepted,
                            unique=None, passed=None, failed_by=None, validated_at=None)
            continue
        if rnd.status == R.VALIDATING:  # its grasps are gone: it runs again
            state.set_round(e.code, rnd, R.PENDING, produced=None, accepted=None,
                            reason=f"not validated and "
                                   f"{e.missing.get(rnd.round_id, 'no result')}; "
                                   f"running it again")
            continue
        if rnd.status not in (*HAS_GRASPS, R.DISCARDED) or rnd.accepted is None:
            if rnd.status == R.DISCARDED:
                state.set_round(e.code, rnd, R.PENDING)
            continue
        have = e.in_final.get(rnd.round_id, 0)
        if have == state.grasps_of(rnd):
            state.set_round(e.code, rnd, R.MERGED, used=have)
        elif rnd.round_id in e.from_folders:
            produced, accepted = e.from_folders[rnd.round_id]
            state.set_round(e.code, rnd, R.FINISHED, produced=produced, accepted=accepted,
                            unique=None)  # judged again, in order, by the merger
        elif have:
            # Part of it is in final.npz (the object was done, its target then raised, and
            # its folder is gone): keep what was merged, never rerun over it.
            state.set_round(e.code, rnd, R.MERGED, accepted=have, unique=have, used=have,
                            **_passed(state, have))
        else:
            state.set_round(e.code, rnd, R.PENDING, produced=None, accepted=None, used=None,
                            passed=None, failed_by=None, validated_at=None,
                            reason=f"grasps not in final.npz and "
                                   f"{e.missing.get(rnd.round_id, 'no result')}; running it again")
    obj.collected = sum(e.in_final.values())
    obj.final_bytes, obj.final_mtime_ns, obj.final_digest = (
        e.final_bytes, e.final_mtime_ns, e.digest)  # the file as found
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
        rnd = new_round(state, e.code, rid)
        if rid in e.in_final:
            n = e.in_final[rid]
            produced, accepted = e.from_folders.get(rid, (n, n))
            state.set_round(e.code, rnd, R.MERGED, produced=produced, accepted=accepted,
                            unique=n, used=n)
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
        state.set_object(obj, O.DONE, None)
    return []


def dataset_lost(state: State, e: ev.DatasetLost) -> list[Effect]:
    """final.npz was unreadable and moved aside (recover): reopen the object so that
    resume reloads its rounds from their folders or reruns them with the same seeds."""
    obj = state.objects[e.code]
    state.set_object(obj, O.ACTIVE, None)
    obj.collected, obj.final_bytes, obj.final_mtime_ns, obj.final_digest = 0, None, None, None
    return [Log("object_reopened", {"object_code": e.code, "reason": e.reason})]


