"""The report's numbers: plain functions over manifest.json, the GPU samples and final.npz.

Reads the manifest as JSON (a live run replaces it atomically), so it never locks or
disturbs a run, and tolerates fields it does not know. figures.py and page.py draw the results.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from supervisor.storage import paths
from supervisor.core import packing, slots

HAS_GRASPS = ("finished", "merged")
OUTCOMES = ("merged", "discarded", "failed", "interrupted", "running")
# The outcome of a round's last attempt, by the round's status (pending: it failed, retry).
LAST_OUTCOME = {"merged": "merged", "finished": "merged", "discarded": "discarded",
                "failed": "failed", "interrupted": "interrupted", "pending": "failed"}
ENERGY_TERMS = ("energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints")
ATTEMPT_COLUMNS = ("row", "start", "end", "outcome", "code", "round_id", "accepted")
SAME_END_S = 0.01  # a failure entry ending within this of finished_at is the last attempt


class ReportError(ValueError):
    """The experiment has no readable manifest."""


def load_manifest(exp_dir: Path) -> dict[str, Any]:
    path = paths.manifest(exp_dir)
    try:
        data = json.loads(path.read_bytes())
        if data.get("version") != 1:
            raise ValueError(f"version {data.get('version')!r}, expected 1")
        if not isinstance(data.get("objects"), dict):
            raise ValueError("no objects")
        for code, obj in data["objects"].items():
            if not isinstance(obj, dict) or not isinstance(obj.get("rounds"), dict) or not all(
                    isinstance(r, dict) for r in obj["rounds"].values()):
                raise ValueError(f"object {code!r} is not a record with rounds")
    except (OSError, ValueError, AttributeError) as exc:
        raise ReportError(f"{path}: unreadable ({exc})") from None
    return with_journal(exp_dir, data)


def with_journal(exp_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The snapshot brought up to date with the journal's events (a live run writes the
    snapshot only every few thousand events or a minute)."""
    from supervisor.storage import manifest, store

    path = paths.journal(exp_dir)
    if not path.exists() or path.stat().st_size == 0:
        return data
    cfg = data.get("config", {})
    try:
        state = manifest.from_json(data, store.policy_of_snapshot(
            {"exp_name": data.get("exp_name"), **cfg}))
        state.set_order([c for c in cfg.get("object_code_list", []) if c in state.objects])
        store.replay(state, exp_dir)
    except (ValueError, KeyError, TypeError):
        return data  # a journal being written or a foreign file: the snapshot will do
    return manifest.to_json(state)


def row_label(gpu: Any, node: Any) -> str:
    if isinstance(gpu, str):  # a cluster's GPU: its key says the node
        return slots.label(gpu)
    name = f"GPU {'?' if gpu is None else gpu}"
    return f"{node}/{name}" if node else name


def row_order(labels: list[str]) -> list[str]:
    """GPU rows by node, then GPU number."""
    def key(label: str) -> tuple[str, float]:
        node, _, gpu = label.rpartition("GPU ")
        return node, float(gpu) if gpu.isdigit() else float("inf")
    return sorted(set(labels), key=key)


def attempts(m: dict[str, Any], now: float, live: bool = True) -> dict[str, Any]:
    """Every attempt that ran, as columns: row (GPU), start, end, outcome, code, round_id.
    Rounds "running" under a dead supervisor died with it: interrupted, at its last write."""
    found: list[tuple[Any, ...]] = []
    for code, obj in m["objects"].items():
        for r in obj.get("rounds", {}).values():
            rid, ends = int(r.get("round_id", -1)), []
            for f in r.get("failures") or ():
                at, dur = f.get("at"), f.get("duration_s")
                if at is None or dur is None:
                    continue
                ends.append(at)
                found.append((row_label(f.get("gpu"), f.get("node")), at - dur, at,
                              "interrupted" if f.get("kind") == "interrupted" else "failed",
                              code, rid, None))
            start, end, status = r.get("started_at"), r.get("finished_at"), r.get("status")
            label = row_label(r.get("gpu"), r.get("node"))
            if status == "running" and start:
                end = now if live else m.get("updated_at") or now
                found.append((label, start, max(start, end),
                              "running" if live else "interrupted", code, rid, None))
            elif start and end and end >= start and status in LAST_OUTCOME \
                    and not any(abs(e - end) < SAME_END_S for e in ends):
                found.append((label, start, end, LAST_OUTCOME[status], code, rid,
                              r.get("accepted")))
    cols: dict[str, Any] = {k: list(v) for k, v in zip(ATTEMPT_COLUMNS, zip(*found))} if found \
        else {k: [] for k in ATTEMPT_COLUMNS}
    cols["start"], cols["end"] = (np.array(cols[k], float) for k in ("start", "end"))
    return cols


def launch_gaps(att: dict[str, Any]) -> np.ndarray:
    """Seconds each GPU stood idle between the end of its rounds and the next start."""
    rows = np.array(att["row"], object)
    gaps = []
    for row in set(att["row"]):
        sel = rows == row
        start, end = att["start"][sel], att["end"][sel]
        order = np.argsort(start, kind="stable")
        start, end = start[order], end[order]
        busy_until = np.maximum.accumulate(end)[:-1]
        gaps.append(np.maximum(0.0, start[1:] - busy_until))
    return np.concatenate(gaps) if gaps else np.zeros(0)


def counted(r: dict[str, Any]) -> int:
    """What a round adds: its accepted grasps, with [validate] those that passed."""
    return (r.get("passed") if r.get("passed") is not None else r.get("accepted")) or 0


def collected(obj: dict[str, Any]) -> int:
    if obj.get("status") == "done":
        return int(obj.get("target", 0))
    got = sum(counted(r) for r in obj.get("rounds", {}).values()
              if r.get("status") in HAS_GRASPS)
    return min(int(got), int(obj.get("target", 0)))


def failure_kind(reason: str | None) -> str:
    """Group reasons as status does: 'invalid result: wrong batch length' -> 'invalid result'."""
    return (reason or "unknown").split(":")[0]


def object_rows(m: dict[str, Any], att: dict[str, Any],
                peak_mib: dict[str, int]) -> list[dict[str, Any]]:
    """One row per object for the table, in the manifest's object order."""
    gpu_s = Counter()
    for code, start, end in zip(att["code"], att["start"], att["end"]):
        gpu_s[code] += end - start
    rows = []
    for code, obj in m["objects"].items():
        rounds = list(obj.get("rounds", {}).values())
        status = Counter(r.get("status") for r in rounds)
        good = [r for r in rounds if r.get("status") in HAS_GRASPS]
        produced = sum(r.get("produced") or 0 for r in good)
        accepted = sum(r.get("accepted") or 0 for r in good)
        dups = [d for d in [obj.get("duplicates")] + [r.get("duplicates") for r in good]
                if d is not None]
        checked = [(r["passed"], r.get("accepted") or 0) for r in rounds
                   if r.get("passed") is not None]
        tried = sum(a for _, a in checked)
        reasons = Counter("interrupted" if f.get("kind") == "interrupted"
                          else failure_kind(f.get("reason"))
                          for r in rounds for f in r.get("failures") or ())
        got, hours = collected(obj), gpu_s[code] / 3600
        peaks = [peak_mib[r["name"]] for r in rounds if r.get("name") in peak_mib]
        rows.append({
            "object_code": code, "status": obj.get("status"), "collected": got,
            "target": obj.get("target"), "merged": status["merged"] + status["finished"],
            "failed": status["failed"], "discarded": status["discarded"],
            "running": status["running"],
            "acceptance": accepted / produced if produced else None,
            "after_dedup": (accepted - sum(dups)) / produced if produced and dups else None,
            "gpu_hours": hours, "grasps_per_gpu_hour": got / hours if hours > 0 else None,
            "peak_mib": max(peaks) if peaks else None,
            "pass_rate": sum(p for p, _ in checked) / tried if tried else None,
            "failures": ", ".join(f"{k} x{v}" for k, v in reasons.most_common()),
            "reason": obj.get("reason"),
        })
    return rows


def progress(m: dict[str, Any]) -> dict[str, Any]:
    """Accepted grasps over time: the total, and per object (clipped at its target)."""
    per_object, times, steps = {}, [], []
    for code, obj in m["objects"].items():
        done = [(r.get("validated_at") or r["finished_at"], counted(r))
                for r in obj.get("rounds", {}).values()
                if r.get("status") in HAS_GRASPS and r.get("finished_at")]
        if not done:
            continue
        t, n = np.array(sorted(done)).T
        y = np.minimum(np.cumsum(n), obj.get("target", 0))
        per_object[code] = (t, y)
        times.append(t)
        steps.append(np.diff(y, prepend=0))
    if not times:
        return {"t": np.zeros(0), "total": np.zeros(0), "objects": {}}
    t, step = np.concatenate(times), np.concatenate(steps)
    order = np.argsort(t, kind="stable")
    return {"t": t[order], "total": np.cumsum(step[order]), "objects": per_object}


def eta_s(m: dict[str, Any], att: dict[str, Any], rows: list[dict[str, Any]],
          gpus: int) -> float | None:
    """Seconds until every active object has its quota: rounds still needed at the
    acceptance rate seen, times the mean successful round, over the GPUs."""
    ok = np.isin(np.array(att["outcome"], object), ["merged", "discarded"])
    if not ok.any():
        return None
    mean_round_s = float((att["end"][ok] - att["start"][ok]).mean())
    batch = max(1, int(m.get("config", {}).get("round_batch_size") or 1))
    rounds = 0
    for row in rows:
        if row["status"] == "active" and row["collected"] < (row["target"] or 0):
            rate = row["acceptance"] if row["acceptance"] is not None else 1.0
            rounds += math.ceil((row["target"] - row["collected"]) / max(1.0, batch * rate))
    return rounds * mean_round_s / max(1, gpus)


def headline(m: dict[str, Any], rows: list[dict[str, Any]], att: dict[str, Any],
             mean_util: float | None, peaks: dict[str, int]) -> dict[str, Any]:
    """The run in numbers: objects, grasps, wall time, GPU-hours, utilisation, gaps, ETA."""
    gaps = launch_gaps(att)
    gpus = m.get("config", {}).get("gpus")
    parallel = len(gpus) if isinstance(gpus, list) else len(set(att["row"]))
    target = sum(r["target"] or 0 for r in rows)
    grasps = sum(r["collected"] for r in rows)
    return {
        "objects": len(rows), "done": sum(r["status"] == "done" for r in rows),
        "failed": sum(r["status"] in ("failed", "exhausted") for r in rows),
        "grasps": grasps, "target": target,
        "finished": grasps >= target or not any(r["status"] == "active" for r in rows),
        "wall_s": float(att["end"].max() - att["start"].min()) if len(att["start"]) else None,
        "gpu_hours": sum(r["gpu_hours"] for r in rows), "mean_util_percent": mean_util,
        "launch_gap_s": float(np.median(gaps)) if len(gaps) else None,
        "eta_s": eta_s(m, att, rows, parallel),
        "peak_round_mib": max(peaks.values()) if peaks else None,
        "packing": packing_text(m),
    }


def packing_text(m: dict[str, Any]) -> str | None:
    """Each card's rounds at once and its measured gain (max_rounds_per_gpu = "auto")."""
    parts = []
    gpus = m.get("gpus", {})
    for key in sorted(gpus, key=lambda k: slots.order(slots.parse(k))):
        gpu = gpus[key]
        level, text = packing.shown_of(gpu)
        if level is None:
            continue
        parts.append(f"{row_label(slots.parse(key), gpu.get('node'))}: {level} at once"
                     + (f" ({text})" if text.endswith("x") else f", {text}" if text else ""))
    return "; ".join(parts) or None


def thresholds(m: dict[str, Any]) -> dict[str, float]:
    """The quality filter's maxima by term ({"E_pen": 0.0015}); "max_" prefixes dropped."""
    return {k.removeprefix("max_"): float(v)
            for k, v in (m.get("config", {}).get("filter") or {}).items() if v is not None}
