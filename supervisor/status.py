"""``python -m supervisor status CONFIG [--json]``: where a run stands, from its manifest.

Reads manifest.json only (it is replaced atomically), so it works while a run is live
without disturbing it, and after it ended.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

from supervisor import manifest as mf, plan
from supervisor.config import Config
from supervisor.lock import live_holder
from supervisor.manifest import FAILED, HAS_GRASPS, MERGED, RUNNING, Manifest, ObjectRecord


def failure_kind(reason: str | None) -> str:
    """Group reasons: 'invalid result: wrong batch length: 7 ...' -> 'invalid result'."""
    return (reason or "unknown").split(":")[0]


def _round_seconds(obj: ObjectRecord) -> list[float]:
    """Durations of successful attempts (rounds that produced grasps)."""
    return [r.finished_at - r.started_at for r in obj.rounds.values()
            if r.status in (*HAS_GRASPS, mf.DISCARDED) and r.finished_at and r.started_at]


def _gpu_seconds(obj: ObjectRecord, now: float) -> float:
    total = 0.0
    for r in obj.rounds.values():
        total += sum(f.get("duration_s") or 0.0 for f in r.failures)
        if r.started_at and r.finished_at and r.status != RUNNING:
            total += r.finished_at - r.started_at
        elif r.started_at and r.status == RUNNING:
            total += now - r.started_at
    return total


def _wall_span(obj: ObjectRecord, now: float) -> float:
    """Seconds from the object's first round start to its last round end (or now)."""
    started = [r for r in obj.rounds.values() if r.started_at]
    ends = [now if r.status == RUNNING else r.finished_at for r in started]
    ends = [e for e in ends if e]
    return max(ends) - min(r.started_at for r in started) if ends else 0.0


def object_status(obj: ObjectRecord, batch_size: int, now: float) -> dict[str, Any]:
    rounds = list(obj.rounds.values())
    span = _wall_span(obj, now)
    rate = plan.acceptance_rate(obj)
    gpu_s = _gpu_seconds(obj, now)
    collected = min(plan.collected(obj), obj.target) if obj.status != mf.DONE else obj.target
    remaining = max(0, obj.target - collected) if obj.status == mf.ACTIVE else 0
    return {
        "object_code": obj.code, "index": obj.index, "status": obj.status,
        "collected": collected, "target": obj.target,
        "rounds_merged": sum(r.status == MERGED for r in rounds),
        "rounds_failed": sum(r.status == FAILED for r in rounds),
        "rounds_running": sum(r.status == RUNNING for r in rounds),
        "acceptance_rate": None if rate is None else round(rate, 4),
        "grasps_per_hour": round(collected / (span / 3600), 1) if span > 0 else None,
        "grasps_per_gpu_hour": round(collected / (gpu_s / 3600), 1) if gpu_s > 0 else None,
        "gpu_hours": round(gpu_s / 3600, 4),
        "rounds_to_go": math.ceil(remaining / plan.expected_yield(obj, batch_size))
        if remaining else 0,
    }


def summarize(config: Config, m: Manifest, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    codes = [c for c in config.object_codes if c in m.objects]
    objects = [object_status(m.objects[c], config.round_batch_size, now) for c in codes]
    durations = [d for c in codes for d in _round_seconds(m.objects[c])]
    failures = Counter(failure_kind(f.get("reason")) for c in codes
                       for r in m.objects[c].rounds.values() for f in r.failures)
    gpus = config.gpus if isinstance(config.gpus, str) else list(config.gpus)
    gpu_ids = {r.gpu for c in codes for r in m.objects[c].rounds.values() if r.gpu is not None}
    parallel = len(gpu_ids) if gpus == "all" else len(gpus)
    rounds_to_go = sum(o["rounds_to_go"] for o in objects)
    mean_round_s = sum(durations) / len(durations) if durations else None
    eta = (rounds_to_go * mean_round_s / max(1, parallel)) if mean_round_s else None
    live = live_holder(config.exp_dir) is not None
    return {
        "exp_name": m.exp_name,
        "updated_at": m.updated_at,
        "run_live": live,
        "objects": len(objects),
        "objects_done": sum(o["status"] == mf.DONE for o in objects),
        "objects_failed": sum(o["status"] in (mf.OBJ_FAILED, mf.EXHAUSTED) for o in objects),
        "grasps_done": sum(o["collected"] for o in objects),
        "grasps_total": sum(o["target"] for o in objects),
        "rounds_running": sum(o["rounds_running"] for o in objects),
        "gpu_hours": round(sum(o["gpu_hours"] for o in objects), 4),
        "failures_by_reason": dict(failures.most_common()),
        "mean_round_s": None if mean_round_s is None else round(mean_round_s, 3),
        "rounds_to_go": rounds_to_go,
        "eta_s": None if eta is None else round(eta, 1),
        "per_object": objects,
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def render(summary: dict[str, Any]) -> str:
    s = summary
    lines = [
        f"experiment {s['exp_name']}: {'running' if s['run_live'] else 'not running'}, "
        f"manifest updated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s['updated_at']))}",
        f"objects {s['objects_done']}/{s['objects']} done, {s['objects_failed']} failed; "
        f"grasps {s['grasps_done']}/{s['grasps_total']}; {s['rounds_running']} round(s) "
        f"running; {s['gpu_hours']:.2f} GPU-hours; ETA {_duration(s['eta_s'])}",
    ]
    if s["failures_by_reason"]:
        lines.append("failures: " + ", ".join(f"{k} x{v}" for k, v in
                                               s["failures_by_reason"].items()))
    lines.append(f"{'object':40} {'status':9} {'grasps':>13} {'merged':>6} {'failed':>6} "
                 f"{'running':>7} {'accept':>6} {'grasps/h':>9} {'grasps/GPU-h':>12}")
    for o in s["per_object"]:
        rate = "-" if o["acceptance_rate"] is None else f"{o['acceptance_rate']:.0%}"
        speed = "-" if o["grasps_per_gpu_hour"] is None else f"{o['grasps_per_gpu_hour']:.0f}"
        hourly = "-" if o["grasps_per_hour"] is None else f"{o['grasps_per_hour']:.0f}"
        lines.append(f"{o['object_code'][:40]:40} {o['status']:9} "
                     f"{o['collected']:>6}/{o['target']:<6} {o['rounds_merged']:>6} "
                     f"{o['rounds_failed']:>6} {o['rounds_running']:>7} {rate:>6} "
                     f"{hourly:>9} {speed:>12}")
    return "\n".join(lines)
