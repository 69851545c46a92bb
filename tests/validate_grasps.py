"""Grasps for the validator's tests, on the stand-in checkout (tests/fixtures/standin-checkout):
its two hands (a palm box, capsule fingers, the Shadow hand's 22 joint names) and
``standin_box``, an 80 x 60 x 60 mm box in two convex parts, at the origin."""

from __future__ import annotations

import math

import numpy as np

from conftest import ROOT
from supervisor.validate.hands import FINGER_JOINTS

STANDIN = ROOT / "tests" / "fixtures" / "standin-checkout" / "BimanGrasp-Optimization"
BOX = "standin_box"
BOX_HALF_X_M = 0.04
PALM_HALF_M = 0.01  # the palm box's half thickness (its local y)
PALM_CENTRE_Z_M = 0.045  # the palm box's centre above the palm's origin (local z)


def hand(x: float, joints: dict[str, float] | None = None, y: float = 0.0) -> dict:
    """A hand whose palm box stands upright at ``x``, centred on z = 0, the fingers
    straight up, clear of the box. Both hands are turned by Rz(90 deg) (local +y -> world
    -x): each thumb (the right hand's on its -y side, the left's on its +y side) points
    away from the box, so the box touches only the palms."""
    qpos = {name: 0.0 for name in FINGER_JOINTS}
    qpos.update(joints or {})
    qpos.update(WRJRx=0.0, WRJRy=0.0, WRJRz=math.pi / 2, WRJTx=x, WRJTy=y,
                WRJTz=-PALM_CENTRE_Z_M)
    return qpos


def clamp(squeeze_m: float = 0.0015, scale: float = 1.0, **joints: dict) -> dict:
    """main.py's dict of a grasp holding the box between the two palms, each pressed
    ``squeeze_m`` into it (negative: a gap)."""
    at = BOX_HALF_X_M * scale + PALM_HALF_M - squeeze_m
    return {"scale": scale, "qpos_left": hand(-at, joints.get("left")),
            "qpos_right": hand(at, joints.get("right")), "energy": 0.0}


def as_main_py(grasps: list[dict], code: str | None = None) -> np.ndarray:
    """Grasps as main.py saves them: every key (starting poses, energies; the fork's
    ``__meta__`` when ``code`` is given), an object array for ``np.save``."""
    items = np.empty(len(grasps), dtype=object)
    items[:] = [{"scale": g["scale"], "qpos_left": g["qpos_left"],
                 "qpos_left_st": dict(g["qpos_left"]), "qpos_right": g["qpos_right"],
                 "qpos_right_st": dict(g["qpos_right"]), "energy": 1.0 + j, "E_fc": 0.5,
                 "E_dis": 0.01, "E_pen": 0.001, "E_spen": 0.0, "E_joints": 0.0,
                 **({"__meta__": {"object_code": code, "item_index": j}} if code else {})}
                for j, g in enumerate(grasps)]
    return items
