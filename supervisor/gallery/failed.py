"""[validate]: grasps that failed validation, to draw with ``show --failed``. final.npz
holds only grasps that passed; a failed one is read back from its round's result file,
where the round folder is kept (``keep_intermediate = true``, or an object not done),
with the reason and the figures the validator gave it."""

from __future__ import annotations

from typing import Any

import numpy as np

from supervisor.config.schema import Config
from supervisor.core.records import RoundStatus
from supervisor.core.state import State
from supervisor.dataset import validation
from supervisor.dataset.results import QPOS_NAMES, ResultError, read_round, with_provenance
from supervisor.storage import paths

MOST = 12  # failed grasps gathered at most (a page keeps about 16 3D views)


def _why(figures: dict[str, np.ndarray], j: int, rid: int, item: int) -> str:
    reason = str(figures[validation.REASON][j]) if validation.REASON in figures else ""
    parts = [f"failed: {reason or validation.REJECTED}"]
    if "max_translation_m" in figures and np.isfinite(figures["max_translation_m"][j]):
        parts.append(f"moved {1000 * float(figures['max_translation_m'][j]):.0f} mm")
    if "max_rotation_deg" in figures and np.isfinite(figures["max_rotation_deg"][j]):
        parts.append(f"turned {float(figures['max_rotation_deg'][j]):.0f} deg")
    if "penetration_m" in figures and np.isfinite(figures["penetration_m"][j]):
        parts.append(f"penetration {1000 * float(figures['penetration_m'][j]):.1f} mm")
    return ", ".join(parts) + f" (round {rid}, item {item})"


def failed_of(config: Config, state: State, code: str,
              indices: list[int]) -> tuple[dict[str, Any], list[str]] | str:
    """The object's failed grasps (those at ``indices`` of the failed ones in (round_id,
    item_index) order, else the first few) as drawable columns with why each failed, or
    why there are none to draw."""
    obj = state.objects[code]
    found: list[tuple[int, int, str]] = []  # (round, item, why)
    gone = 0
    for rid in sorted(obj.rounds):
        rnd = obj.rounds[rid]
        if rnd.passed is None or rnd.status == RoundStatus.PENDING:
            continue
        try:
            items, figures = validation.read(validation.path(config.exp_dir, code, rid))
        except validation.ValidationError:
            continue
        bad = np.flatnonzero(~figures[validation.PASSED])
        if len(bad) and not paths.result(config, rnd.name, code).is_file():
            gone += len(bad)
            continue
        found += [(rid, int(items[j]), _why(figures, j, rid, int(items[j]))) for j in bad]
    if not found:
        return (f"no failed grasp to draw: {gone} failed in rounds whose folders are gone "
                f"(keep_intermediate = true keeps them)" if gone else
                "no grasp failed validation (or none was validated yet)")
    try:
        chosen = [found[i] for i in indices] if indices else found[:4]
    except IndexError:
        return f"--index: {len(found)} failed grasps can be drawn (0 to {len(found) - 1})"
    parts, whys = [], []
    for rid, item, why in chosen[:MOST]:
        rnd = obj.rounds[rid]
        try:
            cols = read_round(paths.result(config, rnd.name, code), None)
        except (ResultError, OSError) as exc:
            return f"round {rid}: {exc}"
        cols = with_provenance(cols, rnd.seed, rid)
        parts.append({k: v[item:item + 1] for k, v in cols.items()})
        whys.append(why)
    keys = set.intersection(*(set(p) for p in parts))
    data: dict[str, Any] = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    data["qpos_names"] = np.array(QPOS_NAMES)
    return data, whys
