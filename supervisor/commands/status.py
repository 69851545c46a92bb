"""``python -m supervisor status CONFIG [--json]``: where a run stands, from its state.

Reads manifest.json and the journal only (never locks, never writes), so it works while
a run is live without disturbing it, and after it ended. Each done object's final.npz is
checked against what the run recorded (size and time, one stat), so a dataset that was
cut, deleted or replaced shows as such instead of as done.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

from supervisor.dataset import integrity
from supervisor.storage import paths
from supervisor.core import packing, plan, slots
from supervisor.gpus import samples
from supervisor.config.schema import Config
from supervisor.storage.lock import live_holder
from supervisor.core.records import (
    HAS_GRASPS, ObjectRecord, ObjectStatus, RoundStatus, removed, validated,
)
from supervisor.run.live import duration
from supervisor.core.state import State
from supervisor.commands.width import fit

R = RoundStatus


def failure_kind(reason: str | None) -> str:
    """Group reasons: 'invalid result: wrong batch length: 7 ...' -> 'invalid result'."""
    return (reason or "unknown").split(":")[0]


def _round_seconds(obj: ObjectRecord) -> list[float]:
    """Durations of successful attempts (rounds that produced grasps)."""
    return [r.finished_at - r.started_at for r in obj.rounds.values()
            if r.status in (*HAS_GRASPS, R.DISCARDED) and r.finished_at and r.started_at]


def _gpu_seconds(obj: ObjectRecord, end: float) -> float:
    total = 0.0
    for r in obj.rounds.values():
        total += sum(f.get("duration_s") or 0.0 for f in r.failures)
        if r.started_at and r.finished_at and r.status != R.RUNNING:
            total += r.finished_at - r.started_at
        elif r.started_at and r.status == R.RUNNING:
            total += max(0.0, end - r.started_at)
    return total


def _wall_span(obj: ObjectRecord, end: float) -> float:
    """Seconds from the object's first round start to its last round end (or now)."""
    started = [r for r in obj.rounds.values() if r.started_at]
    ends = [end if r.status == R.RUNNING else r.finished_at for r in started]
    ends = [e for e in ends if e]
    return max(ends) - min(r.started_at for r in started) if ends else 0.0


def object_status(config: Config, state: State, obj: ObjectRecord, end: float) -> dict[str, Any]:
    rounds = list(obj.rounds.values())
    filtered, duplicates = removed(obj)
    span = _wall_span(obj, end)
    t = state.tally[obj.code]
    rate = t.accepted / t.produced if t.produced else None
    gpu_s = _gpu_seconds(obj, end)
    finding = integrity.check(config, state, obj.code)
    problem = None if finding.usable else finding.problem
    status = obj.status.value if problem is None else "broken"
    collected = min(state.collected(obj.code), obj.target)
    return {
        "object_code": obj.code, "index": obj.index, "status": status,
        "listed": obj.code in config.object_codes,
        "repair": None if problem is None else integrity.advice(config, state, obj.code,
                                                                finding),
        "collected": obj.collected if obj.status == ObjectStatus.DONE else collected,
        "in_final": obj.collected, "target": obj.target, "problem": problem,
        "rounds_merged": t.by_status[R.MERGED],
        "rounds_failed": t.by_status[R.FAILED],
        "rounds_running": t.by_status[R.RUNNING],
        "acceptance_rate": None if rate is None else round(rate, 4),
        "grasps_per_hour": round(collected / (span / 3600), 1) if span > 0 else None,
        "grasps_per_gpu_hour": round(collected / (gpu_s / 3600), 1) if gpu_s > 0 else None,
        "gpu_hours": round(gpu_s / 3600, 4),
        "rounds_to_go": plan.rounds_to_go(state, obj.code),
        "failures": len([f for r in rounds for f in r.failures]),
        "removed_by_filter": filtered,
        "removed_as_duplicates": duplicates,
        "validation": _validation(obj, t) if config.validate.enabled else None,
    }


def _validation(obj: ObjectRecord, t: Any) -> dict[str, Any]:
    """[validate]: grasps validated, passed, failed by reason; rounds left to validate."""
    checked, passed, reasons = validated(obj)
    return {"validated": checked, "passed": passed, "failed_by": reasons,
            "pass_rate": round(passed / checked, 4) if checked else None,
            "rounds_to_validate": t.by_status[R.VALIDATING],
            "grasps_to_validate": sum(r.accepted or 0 for r in obj.rounds.values()
                                      if r.status == R.VALIDATING)}


def _validation_totals(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
    parts = [o["validation"] for o in objects if o.get("validation")]
    if not parts:
        return None
    total = {k: sum(p[k] for p in parts) for k in ("validated", "passed",
                                                   "rounds_to_validate", "grasps_to_validate")}
    reasons: Counter = Counter()
    for p in parts:
        reasons.update(p["failed_by"])
    total["failed_by"] = dict(reasons.most_common())
    total["pass_rate"] = round(total["passed"] / total["validated"], 4) \
        if total["validated"] else None
    return total


def _validation_line(v: dict[str, Any]) -> str:
    rate = (f"{v['passed']} of {v['validated']} validated grasps passed "
            f"({v['pass_rate']:.0%})" if v["validated"] else "no grasp validated yet")
    why = ", ".join(f"{k} {n}" for k, n in v["failed_by"].items())
    return (f"validation: {rate}" + (f"; failed: {why}" if why else "")
            + f"; to validate: {v['rounds_to_validate']} round(s), "
              f"{v['grasps_to_validate']} grasps")


def summarize(config: Config, state: State, now: float | None = None) -> dict[str, Any]:
    live = live_holder(config.exp_dir) is not None
    now = time.time() if now is None else now
    # The last sign of life: the snapshot, or the journal appended since.
    try:
        updated = max(state.updated_at, os.stat(paths.journal(config.exp_dir)).st_mtime)
    except OSError:
        updated = state.updated_at
    # A dead supervisor's "running" rounds stopped when it did: count them up to then.
    end = now if live else updated
    codes = [c for c in config.object_codes if c in state.objects]
    objects = [object_status(config, state, state.objects[c], end) if c in state.objects
               else _not_started(config, c) for c in config.object_codes]
    # Objects of earlier runs that the config no longer lists: their final.npz stays.
    unlisted = [object_status(config, state, state.objects[c], end) for c in state.objects
                if c not in set(config.object_codes)]
    for o in objects if not live else ():
        o["rounds_running"] = 0
    durations = [d for c in codes for d in _round_seconds(state.objects[c])]
    failures = Counter(failure_kind(f.get("reason")) for c in codes
                       for r in state.objects[c].rounds.values() for f in r.failures
                       if f.get("kind", "failed") == "failed")
    mean_round_s = sum(durations) / len(durations) if durations else None
    parallel = len([g for g, r in state.gpus.items() if r.status == "healthy"]) or 1
    return {
        "exp_name": state.policy.exp_name,
        "updated_at": round(updated, 3),
        "run_live": live,
        **_totals(objects, live),
        "failures_by_reason": dict(failures.most_common()),
        "validation": _validation_totals(objects),
        "gpus": {str(g): {"status": r.status.value, "reason": r.reason,
                          "rounds_ok": r.rounds_ok, "rounds_failed": r.rounds_failed,
                          "footprint_mib": r.footprint_mib, "packing": packing.summary(r)}
                 for g, r in sorted(state.gpus.items(), key=lambda i: slots.order(i[0]))},
        "mean_round_s": None if mean_round_s is None else round(mean_round_s, 3),
        "eta_s": _eta_s(objects, mean_round_s, parallel, live),
        "gpu_samples": samples.latest_and_mean(config.exp_dir),
        "recover_command": config.command("recover"),
        "per_object": objects,
        "not_in_list": unlisted,
        **_slurm(config),
    }


def _slurm(config: Config) -> dict[str, Any]:
    """With [backend] kind = "slurm": the experiment's jobs in the queue, and why pending."""
    if config.backend.kind != "slurm":
        return {}
    from supervisor.backends.slurm.overview import overview
    return {"slurm": overview(config)}


def _not_started(config: Config, code: str) -> dict[str, Any]:
    """A listed object that no run has registered yet (the next run does)."""
    target = config.target_count_per_object
    return {"object_code": code, "index": None, "status": "not started", "listed": True,
            "repair": None, "collected": 0, "in_final": 0, "target": target,
            "problem": None, "rounds_merged": 0, "rounds_failed": 0, "rounds_running": 0,
            "acceptance_rate": None, "grasps_per_hour": None, "grasps_per_gpu_hour": None,
            "gpu_hours": 0.0, "rounds_to_go": -(-target // config.round_batch_size),
            "failures": 0, "removed_by_filter": 0, "removed_as_duplicates": 0}


def _totals(objects: list[dict[str, Any]], live: bool) -> dict[str, Any]:
    count = lambda status: sum(o["status"] == status for o in objects)  # noqa: E731
    return {
        "objects": len(objects), "objects_done": count("done"),
        "objects_failed": count("failed"), "objects_exhausted": count("exhausted"),
        "objects_broken": count("broken"), "objects_not_started": count("not started"),
        "grasps_done": sum(o["collected"] for o in objects if o["status"] != "broken"),
        "grasps_total": sum(o["target"] for o in objects),
        "rounds_running": sum(o["rounds_running"] for o in objects) if live else 0,
        "gpu_hours": round(sum(o["gpu_hours"] for o in objects), 4),
        "removed_by_filter": sum(o["removed_by_filter"] for o in objects),
        "removed_as_duplicates": sum(o["removed_as_duplicates"] for o in objects),
        "rounds_to_go": sum(o["rounds_to_go"] for o in objects),
    }


def _eta_s(objects: list[dict[str, Any]], mean_round_s: float | None, parallel: int,
           live: bool) -> float | None:
    """None when unknown, or when nothing left can finish (failed, exhausted, broken)."""
    if all(o["status"] == "done" for o in objects):
        return 0.0
    if not any(o["status"] in ("active", "not started") for o in objects):
        return None
    to_go = sum(o["rounds_to_go"] for o in objects)
    if not to_go:
        return 0.0
    return round(to_go * mean_round_s / parallel, 1) if mean_round_s and live else None


def render(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"experiment {s['exp_name']}: {'running' if s['run_live'] else 'not running'}, "
        f"manifest updated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['updated_at']))}",
        f"objects {s['objects_done']}/{s['objects']} done, {s['objects_failed']} failed, "
        f"{s['objects_exhausted']} exhausted"
        + (f", {s['objects_not_started']} not started" if s["objects_not_started"] else "")
        + f"; grasps {s['grasps_done']}/{s['grasps_total']}; "
        f"{s['rounds_running']} round(s) running; {s['gpu_hours']:.2f} GPU-hours; {_eta(s)}",
        f"removed: {s['removed_by_filter']} by the quality filter, "
        f"{s['removed_as_duplicates']} near-duplicates",
    ]
    sampled = s["gpu_samples"]
    if sampled.get("sampled"):
        mean = sampled.get("mean_util_percent")
        # A run that is not running shows what its cards did, not what they do now.
        when = "" if s["run_live"] else " at the last sample, " + time.strftime(
            "%Y-%m-%d %H:%M:%S", time.localtime(max(g["at"] for g in sampled["gpus"])))
        lines.append(f"GPUs{when}: " + "; ".join(
            f"{g['gpu']} {g['util_percent']}% {g['used_mib']}/{g['total_mib']} MiB"
            for g in sampled["gpus"]) + ("" if mean is None else f"; mean utilisation {mean:.0f}%"))
    else:
        lines.append("GPUs: not sampled (no NVML)")
    packed = [packing.describe(slots.label(slots.parse(g)), v["packing"])
              for g, v in s["gpus"].items() if v["packing"]["level"] is not None]
    if packed:
        lines.append("packing: " + "; ".join(packed))
    bad = {g: v for g, v in s["gpus"].items() if v["status"] != "healthy"}
    for gpu, v in bad.items():
        lines.append(f"{slots.label(slots.parse(gpu))} {v['status']}: {v['reason']}")
    if "slurm" in s:
        from supervisor.backends.slurm.overview import render as slurm_lines
        lines += slurm_lines(s["slurm"])
    for o in s["per_object"] + s["not_in_list"]:
        if o["problem"]:
            lines.append(f"{o['object_code']}: {o['problem']}; {o['repair']}")
    if s.get("validation"):
        lines.append(_validation_line(s["validation"]))
    if s["failures_by_reason"]:
        lines.append("failures: " + ", ".join(f"{k} x{v}" for k, v in
                                               s["failures_by_reason"].items()))
    checked = bool(s.get("validation"))  # [validate]: a column of pass rates
    lines.append(f"{'object':40} {'status':11} {'grasps':>13} {'merged':>6} {'failed':>6} "
                 f"{'running':>7} {'accept':>6} " + (f"{'passed':>6} " if checked else "")
                 + f"{'filtered':>8} {'dups':>6} {'grasps/h':>9} {'grasps/GPU-h':>12}")
    for o in s["per_object"]:
        rate = "-" if o["acceptance_rate"] is None else f"{o['acceptance_rate']:.0%}"
        speed = "-" if o["grasps_per_gpu_hour"] is None else f"{o['grasps_per_gpu_hour']:.0f}"
        hourly = "-" if o["grasps_per_hour"] is None else f"{o['grasps_per_hour']:.0f}"
        have = "-" if o["status"] == "broken" else o["collected"]  # not what was delivered
        lines.append(f"{fit(o['object_code'], 40)} {o['status']:11} "
                     f"{have:>6}/{o['target']:<6} {o['rounds_merged']:>6} "
                     f"{o['rounds_failed']:>6} {o['rounds_running']:>7} {rate:>6} "
                     + (f"{_passed(o):>6} " if checked else "")
                     + f"{o['removed_by_filter']:>8} {o['removed_as_duplicates']:>6} "
                     f"{hourly:>9} {speed:>12}")
    if s["not_in_list"]:
        lines.append(f"not in the current list ({len(s['not_in_list'])}; their final.npz "
                     f"stays, `export --include-unlisted` exports them): " + ", ".join(
                         f"{o['object_code']} {o['status']} {o['in_final']}/{o['target']}"
                         for o in s["not_in_list"]))
    return "\n".join(lines)


def _passed(o: dict[str, Any]) -> str:
    v = o.get("validation") or {}
    return "-" if v.get("pass_rate") is None else f"{v['pass_rate']:.0%}"


def _eta(s: dict[str, Any]) -> str:
    if s["objects_broken"]:
        return f"no ETA: {s['objects_broken']} final.npz to repair (below)"
    if s["objects_done"] == s["objects"]:
        return "all done"
    if not any(o["status"] in ("active", "not started") for o in s["per_object"]):
        return "no ETA: nothing left that can finish"
    if s["run_live"] and not s["rounds_running"]:
        # a run waiting (another user's job holds the cards' memory) is not seconds away
        return "no ETA: no round is running now (the log's gpu_wait says what it waits for)"
    return f"ETA {duration(s['eta_s'])}"
