"""``status``'s figures of ``[validate]``: per object and over all, grasps validated,
passed and failed by reason, and what is left to validate."""

from __future__ import annotations

from collections import Counter
from typing import Any

from supervisor.core.records import ObjectRecord, RoundStatus as R, validated


def of_object(obj: ObjectRecord, t: Any) -> dict[str, Any]:
    """[validate]: grasps validated, passed, failed by reason; rounds left to validate."""
    checked, passed, reasons = validated(obj)
    return {"validated": checked, "passed": passed, "failed_by": reasons,
            "pass_rate": round(passed / checked, 4) if checked else None,
            "rounds_to_validate": t.by_status[R.VALIDATING],
            "grasps_to_validate": sum(r.accepted or 0 for r in obj.rounds.values()
                                      if r.status == R.VALIDATING)}


def totals(objects: list[dict[str, Any]]) -> dict[str, Any] | None:
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


def line(v: dict[str, Any]) -> str:
    rate = (f"{v['passed']} of {v['validated']} validated grasps passed "
            f"({v['pass_rate']:.0%})" if v["validated"] else "no grasp validated yet")
    why = ", ".join(f"{k} {n}" for k, n in v["failed_by"].items())
    return (f"validation: {rate}" + (f"; failed: {why}" if why else "")
            + f"; to validate: {v['rounds_to_validate']} round(s), "
              f"{v['grasps_to_validate']} grasps")


def pass_rate(o: dict[str, Any]) -> str:
    v = o.get("validation") or {}
    return "-" if v.get("pass_rate") is None else f"{v['pass_rate']:.0%}"
