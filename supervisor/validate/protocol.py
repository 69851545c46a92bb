"""DexGraspBench's force-closure test (``src/task/eval_func/fc_mocap.py``, main branch),
adapted to two hands, on one grasp in a compiled ``scene``:

1. Start: both wrists at the grasp's pose (held there by their mocap welds), the fingers
   at the pregrasp (0.9 x the grasp's joints), the object at the origin, still.
2. Gate: the deepest contact there, hand into object or hand into hand (MuJoCo's contact
   depth), over ``max_penetration_m`` rejects the grasp unsimulated (``eval.yaml``
   ``max_pene``; DexGraspBench gates on both).
3. Close: the servos' targets go pregrasp -> grasp, then grasp -> squeeze (1.1 x the
   joints), each in 10 even moves of 10 steps.
4. Push: from that state, a force of ``force_n`` on the object along +x, -x, +y, -y, +z,
   -z in turn, each for 10 blocks of 50 steps (2 s). After each block the object's
   translation and rotation from its start are read; the grasp fails at the first block
   where it moved ``max_translation_m`` or more, or turned ``max_rotation_deg`` or more.

DexGraspBench replays steps 1 and 3 for every direction; the simulation is deterministic,
so here they run once and each direction starts from a copy of the state they end in
(``mjSTATE_INTEGRATION``, everything the next step reads): the same figures, 3,200 steps
instead of 4,200.

A simulation that diverges is a failure of its own (``diverged``): MuJoCo resets the state
to the start when accelerations blow up, so the object would seem not to have moved; its
warnings (bad qpos, qvel, qacc; full contact or constraint buffers) and the state's
finiteness are checked after every block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import mujoco
import numpy as np

from supervisor.config.schema import ValidateSettings
from supervisor.validate.hands import SIDES
from supervisor.validate.pose import PREGRASP, SQUEEZE, HandPose, quat_angle_deg
from supervisor.validate.scene import Scene

MOVES = 10  # per closing stage (DexGraspBench's control_hand_with_interp)
STEPS_PER_MOVE = 10
BLOCKS = 10  # per direction, each followed by a check
STEPS_PER_BLOCK = 50
DIRECTIONS = ((0, 1.0), (0, -1.0), (1, 1.0), (1, -1.0), (2, 1.0), (2, -1.0))  # axis, sign
BAD_WARNINGS = (mujoco.mjtWarning.mjWARN_BADQPOS, mujoco.mjtWarning.mjWARN_BADQVEL,
                mujoco.mjtWarning.mjWARN_BADQACC, mujoco.mjtWarning.mjWARN_CONTACTFULL,
                mujoco.mjtWarning.mjWARN_CNSTRFULL)
STATE = mujoco.mjtState.mjSTATE_INTEGRATION
REASONS = ("penetration", "translation", "rotation", "diverged")


@dataclass(frozen=True)
class Outcome:
    passed: bool
    max_translation_m: float  # NaN where not simulated (gate) or diverged
    max_rotation_deg: float
    penetration_m: float  # at the start, the deepest contact; 0 without one
    fail_reason: str  # "" for a pass, else one of REASONS


class Diverged(Exception):
    pass


def _place(scene: Scene, poses: Mapping[str, HandPose], frac: float) -> None:
    d = scene.data
    for side in SIDES:
        pose, adr = poses[side], scene.free_adr[side]
        d.qpos[adr:adr + 3] = pose.position
        d.qpos[adr + 3:adr + 7] = pose.quat
        d.qpos[scene.joint_adr[side]] = pose.joints * frac
        d.ctrl[scene.actuators[side]] = pose.joints * frac
        d.mocap_pos[scene.mocap[side]] = pose.position
        d.mocap_quat[scene.mocap[side]] = pose.quat
    d.qpos[scene.object_adr + 3] = 1.0  # unrotated, at the origin


def penetration(scene: Scene) -> float:
    """The deepest contact of the current state between a hand and the object or between
    hand geoms, in metres (0 when nothing penetrates)."""
    d = scene.data
    if d.ncon == 0:
        return 0.0
    owners = scene.owner[d.contact.geom[:d.ncon]]
    involves_hand = (owners <= 1).any(axis=1)
    dist = d.contact.dist[:d.ncon][involves_hand]
    return max(0.0, -float(dist.min())) if len(dist) else 0.0


def _step(scene: Scene, n: int) -> None:
    mujoco.mj_step(scene.model, scene.data, nstep=n)
    d = scene.data
    if any(d.warning[w].number for w in BAD_WARNINGS) or not (
            np.isfinite(d.qpos).all() and np.isfinite(d.qvel).all()):
        raise Diverged()


def _close(scene: Scene, poses: Mapping[str, HandPose]) -> None:
    for start, end in ((PREGRASP, 1.0), (1.0, SQUEEZE)):
        for frac in np.linspace(start, end, MOVES + 1)[1:]:
            for side in SIDES:
                scene.data.ctrl[scene.actuators[side]] = poses[side].joints * frac
            _step(scene, STEPS_PER_MOVE)


def _moved(scene: Scene) -> tuple[float, float]:
    q = scene.data.qpos[scene.object_adr:scene.object_adr + 7]
    return float(np.linalg.norm(q[:3])), quat_angle_deg(q[3:])


def _push(scene: Scene, closed: np.ndarray, settings: ValidateSettings) -> tuple[float, float, str]:
    """The largest translation and rotation seen, and the failure ("" when none)."""
    m, d = scene.model, scene.data
    worst_t = worst_r = 0.0
    for axis, sign in DIRECTIONS:
        mujoco.mj_setState(m, d, closed, STATE)
        d.xfrc_applied[scene.object_body, :] = 0.0
        d.xfrc_applied[scene.object_body, axis] = sign * settings.force_n
        for _ in range(BLOCKS):
            _step(scene, STEPS_PER_BLOCK)
            t, r = _moved(scene)
            worst_t, worst_r = max(worst_t, t), max(worst_r, r)
            if t >= settings.max_translation_m:
                return worst_t, worst_r, "translation"
            if r >= settings.max_rotation_deg:
                return worst_t, worst_r, "rotation"
    return worst_t, worst_r, ""


def simulate(scene: Scene, poses: Mapping[str, HandPose],
             settings: ValidateSettings) -> Outcome:
    """The test on one grasp. The scene's data is reset first: the figures depend on this
    grasp alone, never on what the scene ran before."""
    m, d = scene.model, scene.data
    mujoco.mj_resetData(m, d)
    _place(scene, poses, PREGRASP)
    mujoco.mj_forward(m, d)
    depth = penetration(scene)
    if depth > settings.max_penetration_m:
        return Outcome(False, math.nan, math.nan, depth, "penetration")
    try:
        _close(scene, poses)
        closed = np.empty(mujoco.mj_stateSize(m, STATE))
        mujoco.mj_getState(m, d, closed, STATE)
        worst_t, worst_r, reason = _push(scene, closed, settings)
    except Diverged:
        return Outcome(False, math.nan, math.nan, depth, "diverged")
    return Outcome(reason == "", worst_t, worst_r, depth, reason)
