"""The checkout's two Shadow hands, made fit for simulation.

BimanGrasp keeps them in ``BimanGrasp-Optimization/mjcf/{left,right}_shadow_hand.xml``
(the fork and the public release have the same two files). Neither compiles in MuJoCo as
it is, and what compiles is not yet the hand BimanGrasp optimised; ``fixed_xml`` changes,
in the XML's text and nothing else:

- ``option/@apirate`` is gone from MuJoCo's schema: ``<option>`` and ``<size>`` are
  dropped (the scene sets its own simulation options).
- ``compiler/@meshdir`` is relative to BimanGrasp's working folder, not to the XML: mesh
  assets no geom uses are dropped, a used one is found from the checkout.
- the actuators and sensors (two name wrist joints the hands do not have) are dropped;
  ``scene`` adds its own position servos, one per finger joint.
- the coupling tendons are dropped: BimanGrasp optimises every joint on its own and its
  grasps break the couplings.
- the joints' armature and damping sit in a default class no joint uses (a hand without
  them blows up at once under position control): every joint gets that class.
- the left hand's joint ranges are negated, as BimanGrasp's ``HandModel`` does.
- the marker geoms (``V_*``, 1 mm boxes in the thumb) collide with the thumb in the file:
  they are made non-colliding.

Which geoms collide with what is the scene's business (``scene``); the hands' own
finger-finger contact pairs are kept.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

SIDES = ("left", "right")
MJCF_FILES = {side: f"mjcf/{side}_shadow_hand.xml" for side in SIDES}
FINGER_JOINTS = (
    "robot0:FFJ3", "robot0:FFJ2", "robot0:FFJ1", "robot0:FFJ0",
    "robot0:MFJ3", "robot0:MFJ2", "robot0:MFJ1", "robot0:MFJ0",
    "robot0:RFJ3", "robot0:RFJ2", "robot0:RFJ1", "robot0:RFJ0",
    "robot0:LFJ4", "robot0:LFJ3", "robot0:LFJ2", "robot0:LFJ1", "robot0:LFJ0",
    "robot0:THJ4", "robot0:THJ3", "robot0:THJ2", "robot0:THJ1", "robot0:THJ0",
)
VISUAL_PREFIX = "V_"  # Shadow's naming: C_ collision geoms, V_ markers
DROPPED_SECTIONS = ("option", "size", "actuator", "sensor", "tendon", "keyframe")
JOINT_DYNAMICS = ("armature", "damping")


class HandError(ValueError):
    """A hand file that cannot be read or is not the Shadow hand BimanGrasp uses."""


def mjcf_path(checkout: Path, side: str) -> Path:
    return Path(checkout) / MJCF_FILES[side]


def _read(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise HandError(f"{path}: no such file (the checkout's hand model)") from None
    except (ET.ParseError, OSError) as exc:
        raise HandError(f"{path}: unreadable MJCF ({exc})") from None


def _dynamics_class(root: ET.Element, path: Path) -> str:
    """The default class whose joints have armature or damping."""
    found = [d.get("class", "") for d in root.iter("default")
             for j in d.findall("joint") if any(j.get(k) for k in JOINT_DYNAMICS)]
    if len(found) != 1:
        raise HandError(f"{path}: expected one default class with joint armature and "
                        f"damping, found {len(found)}")
    return found[0]


def _drop_assets(root: ET.Element, checkout: Path) -> None:
    used = {g.get("mesh") for g in root.iter("geom") if g.get("mesh")}
    for asset in root.findall("asset"):
        for mesh in asset.findall("mesh"):
            if mesh.get("name") not in used:
                asset.remove(mesh)
    for compiler in root.findall("compiler"):
        compiler.attrib.pop("texturedir", None)
        meshdir = compiler.attrib.pop("meshdir", None)
        if meshdir is not None and used:
            compiler.set("meshdir", str((checkout / meshdir).resolve()))


def _negate_range(text: str) -> str:
    lo, hi = (float(x) for x in text.split())
    return f"{-hi!r} {-lo!r}"


def _fix_joints(root: ET.Element, path: Path, side: str) -> None:
    cls = _dynamics_class(root, path)
    names = []
    for joint in root.find("worldbody").iter("joint"):
        names.append(joint.get("name"))
        joint.attrib.setdefault("class", cls)
        if side == "left" and joint.get("range"):
            joint.set("range", _negate_range(joint.get("range")))
    if tuple(names) != FINGER_JOINTS:
        raise HandError(f"{path}: its joints are not the Shadow hand's 22 finger joints in "
                        f"BimanGrasp's order ({len(names)} joints)")


def fixed_xml(checkout: Path, side: str) -> str:
    """The hand's MJCF as text, fixed as the module says; raises HandError."""
    checkout = Path(checkout)
    path = mjcf_path(checkout, side)
    root = _read(path)
    if root.tag != "mujoco" or root.find("worldbody") is None:
        raise HandError(f"{path}: not an MJCF model (no <mujoco><worldbody>)")
    for name in DROPPED_SECTIONS:
        for section in root.findall(name):
            root.remove(section)
    _drop_assets(root, checkout)
    _fix_joints(root, path, side)
    for geom in root.find("worldbody").iter("geom"):
        if geom.get("name", "").split(":")[-1].startswith(VISUAL_PREFIX):
            geom.set("contype", "0")
            geom.set("conaffinity", "0")
    return ET.tostring(root, encoding="unicode")
