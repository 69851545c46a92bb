"""A hand's pose as main.py saves it, in MuJoCo's terms.

main.py saves each hand as 28 named numbers (``qpos_left``, ``qpos_right``): 22 finger
joints, ``WRJRx/y/z`` and ``WRJTx/y/z``. BimanGrasp (fork and public release alike) saves
the wrist rotation ``R`` as ``transforms3d.euler.mat2euler(R, axes='sxyz')``, so
``R = euler2mat(WRJRx, WRJRy, WRJRz)`` = Rz @ Ry @ Rx, and a point ``p`` of the hand model
is at ``R @ p + WRJT`` in the object's frame (``utils/hand_model.py``): the palm is the
model's root, with no offset and no scale. The object sits at the origin, unrotated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from supervisor.validate.hands import FINGER_JOINTS

ROTATION = ("WRJRx", "WRJRy", "WRJRz")
TRANSLATION = ("WRJTx", "WRJTy", "WRJTz")
PREGRASP = 0.9  # DexGraspBench's baseline conversion of static grasps: joints x 0.9 ...
SQUEEZE = 1.1  # ... and x 1.1 (baseline branch, src/task/convert_format.py)


class PoseError(ValueError):
    """A grasp whose hand pose lacks a name or holds something that is not a number."""


@dataclass(frozen=True)
class HandPose:
    position: np.ndarray  # (3,) metres
    quat: np.ndarray  # (4,) w, x, y, z
    joints: np.ndarray  # (22,) radians, FINGER_JOINTS order


def euler_sxyz(ax: float, ay: float, az: float) -> np.ndarray:
    """transforms3d's ``euler2mat(ax, ay, az, 'sxyz')``: Rz(az) @ Ry(ay) @ Rx(ax)."""
    ca, sa, cb, sb, cc, sc = (math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay),
                              math.cos(az), math.sin(az))
    return np.array([[cb * cc, sa * sb * cc - ca * sc, ca * sb * cc + sa * sc],
                     [cb * sc, sa * sb * sc + ca * cc, ca * sb * sc - sa * cc],
                     [-sb, sa * cb, ca * cb]])


def mat2quat(rot: np.ndarray) -> np.ndarray:
    """A rotation matrix as a unit quaternion (w, x, y, z), w >= 0."""
    m = rot
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s,
             (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax([m[0, 0], m[1, 1], m[2, 2]]))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def _number(qpos: Mapping[str, float], name: str, side: str) -> float:
    try:
        value = float(qpos[name])
    except KeyError:
        raise PoseError(f"qpos_{side} has no {name!r}") from None
    except (TypeError, ValueError):
        raise PoseError(f"qpos_{side}[{name!r}] is not a number: {qpos[name]!r}") from None
    if not math.isfinite(value):
        raise PoseError(f"qpos_{side}[{name!r}] is not finite: {value}")
    return value


def hand_pose(qpos: Mapping[str, float], side: str) -> HandPose:
    """One hand of a main.py grasp; raises PoseError."""
    if not isinstance(qpos, Mapping):
        raise PoseError(f"qpos_{side} is a {type(qpos).__name__}, not a dict of joints")
    rot = euler_sxyz(*(_number(qpos, n, side) for n in ROTATION))
    return HandPose(np.array([_number(qpos, n, side) for n in TRANSLATION]), mat2quat(rot),
                    np.array([_number(qpos, n, side) for n in FINGER_JOINTS]))


def quat_angle_deg(q: np.ndarray) -> float:
    """The angle (degrees, 0-180) a unit quaternion (w, x, y, z) turns by."""
    w = min(1.0, abs(float(q[0])) / max(float(np.linalg.norm(q)), 1e-300))
    return math.degrees(2.0 * math.acos(w))
