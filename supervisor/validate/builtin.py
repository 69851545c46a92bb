"""The built-in validator's entry points: ``check`` (grasps as main.py saves them ->
per-grasp columns) and ``check_setup`` (is everything it needs in the checkout).

The columns, each of ``len(items)``:

- ``passed`` (bool): held against the force in all six directions;
- ``max_translation_m``, ``max_rotation_deg`` (float64): the most the object moved and
  turned from its start over the checks simulated (all 60 for a pass, up to the failing
  one for a failure); NaN where nothing was simulated (``penetration``) or the
  simulation diverged;
- ``penetration_m`` (float64): the deepest contact at the start;
- ``fail_reason`` (``<U16``): "" for a pass, else ``penetration``, ``translation``,
  ``rotation`` or ``diverged``.

Each grasp's figures depend on that grasp alone (the scene's state is reset for each),
bit for bit in any process, whatever else the call holds.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import mujoco
import numpy as np

from supervisor.config.schema import PROTOCOL_KEYS, ValidateSettings
from supervisor.validate.convex import ObjectError, mesh_path, read_parts
from supervisor.validate.hands import MJCF_FILES, SIDES, HandError, fixed_xml
from supervisor.validate.pose import PoseError, hand_pose
from supervisor.validate.protocol import Outcome, simulate
from supervisor.validate.scene import Scenes

COLUMNS = ("passed", "max_translation_m", "max_rotation_deg", "penetration_m", "fail_reason")
REASON_DTYPE = "<U16"
_SCENES = Scenes()  # one per process: a worker validates round after round


class ValidateError(ValueError):
    """What the validator cannot work with (a checkout's file, a grasp); one line."""


def settings_from(protocol: Mapping[str, Any]) -> ValidateSettings:
    """``ValidateSettings.protocol()`` back into settings (the worker's requests carry it);
    unknown keys, non-numbers and values under a key's minimum are refused."""
    unknown = sorted(set(protocol) - set(PROTOCOL_KEYS))
    if unknown:
        raise ValidateError(f"settings: unknown key(s) {', '.join(unknown)} "
                            f"(known: {', '.join(PROTOCOL_KEYS)})")
    rules = {f.name: f.metadata for f in fields(ValidateSettings)}
    values = {}
    for key, value in protocol.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < rules[key].get("min", -math.inf):
            raise ValidateError(f"settings: {key} must be a finite number >= "
                                f"{rules[key].get('min')}, got {value!r}")
        values[key] = float(value)
    return ValidateSettings(kind="mujoco", **values)


def quiet_mujoco() -> None:
    """MuJoCo's own handler prints each warning (an unstable simulation's) and appends it
    to MUJOCO_LOG.TXT in the working folder; the validator counts them itself
    (``protocol``), so its process keeps its output and the folder stays clean."""
    mujoco.set_mju_user_warning(_ignore)


def _ignore(message: str) -> None:
    pass


def check_setup(checkout: Path, object_codes: Sequence[str]) -> str | None:
    """One line naming what the validator is missing in ``checkout`` (the
    ``BimanGrasp-Optimization`` folder) and how to fix it, or None when nothing is."""
    checkout = Path(checkout)
    if not checkout.is_dir():
        return (f"{checkout} is not a folder; point [main] cwd (or validate "
                "--checkout) at the checkout's BimanGrasp-Optimization folder")
    for side in SIDES:
        try:
            fixed_xml(checkout, side)
        except HandError as exc:
            return (f"{exc}; the built-in validator reads BimanGrasp's own "
                    f"{MJCF_FILES[side]} from the checkout's BimanGrasp-Optimization folder "
                    "([main] cwd, or validate --checkout)")
    missing = [c for c in object_codes if not mesh_path(checkout, c).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        return (f"no {mesh_path(checkout, missing[0])}{more}; the built-in "
                "validator needs each object's CoACD decomposition where main.py reads it "
                "(../data/meshdata/<code>/coacd/decomposed.obj)")
    for code in object_codes:
        try:
            read_parts(checkout, code)
        except ObjectError as exc:
            return f"{exc}; replace it with the object's CoACD decomposition"
    return None


def _one(checkout: Path, code: str, item: Any, j: int, settings: ValidateSettings) -> Outcome:
    if not isinstance(item, Mapping):
        raise ValidateError(f"grasp {j} is a {type(item).__name__}, not main.py's dict")
    try:
        poses = {side: hand_pose(item.get(f"qpos_{side}"), side) for side in SIDES}
        scale = float(item["scale"])
    except (PoseError, KeyError, TypeError, ValueError) as exc:
        raise ValidateError(f"grasp {j}: {exc if isinstance(exc, PoseError) else 'no scale'}") \
            from None
    if not (math.isfinite(scale) and scale > 0):
        raise ValidateError(f"grasp {j}: scale {scale} is not a positive number")
    try:
        scene = _SCENES.get(checkout, code, scale, settings)
    except (HandError, ObjectError) as exc:
        raise ValidateError(str(exc)) from None
    except ValueError as exc:  # MuJoCo's compiler, on a part it cannot use
        raise ValidateError(f"object {code} at scale {scale}: MuJoCo cannot compile the "
                            f"scene ({' '.join(str(exc).split())})") from None
    return simulate(scene, poses, settings)


def check(checkout: Path, object_code: str, items: Sequence[dict],
          settings: ValidateSettings) -> dict[str, np.ndarray]:
    """Validate main.py's grasps (its dicts: ``qpos_left``, ``qpos_right``, ``scale``) of
    one object; the five columns, in ``items``' order. Raises ValidateError."""
    quiet_mujoco()
    outcomes = [_one(Path(checkout), object_code, item, j, settings)
                for j, item in enumerate(items)]
    return {
        "passed": np.array([o.passed for o in outcomes], dtype=bool),
        "max_translation_m": np.array([o.max_translation_m for o in outcomes], np.float64),
        "max_rotation_deg": np.array([o.max_rotation_deg for o in outcomes], np.float64),
        "penetration_m": np.array([o.penetration_m for o in outcomes], np.float64),
        "fail_reason": np.array([o.fail_reason for o in outcomes], dtype=REASON_DTYPE),
    }
