"""One object between two hands, compiled for MuJoCo: the checkout's hands as ``hands``
fixes them and the object's convex parts (``convex``) at one scale, with DexGraspBench's
simulation options and contact parameters (``src/util/hand_util.py``, main branch).

- Options: timestep 4 ms, implicitfast, gravity off, elliptic friction cones, impratio 10,
  2 noslip iterations.
- Each palm gets a free joint, welded to a mocap body that holds the wrist where the
  grasp puts it (weld solimp 0.9, 0.95, 0.001, 0.5, 2; every field of its data set:
  anchor 0, relative pose identity, torque scale 1).
- One position servo per finger joint: kp 5, force within +-3, target within the joint's
  range (DexGraspBench's Shadow hand, ``assets/hand/shadow/right_hand.xml``).
- Every geom: friction (``friction``, ``torsional_friction``) with condim 4; the hands'
  geoms solimp (0.5, 0.99, 1e-4), solref (0.005, 1).
- Who touches whom: the hand files give their geoms ``conaffinity=0``, so the two hands
  would pass through each other; here the left hand's geoms have contype 2, conaffinity
  4, the right's 4 and 2, the object's 1 and 6: each hand touches the object and the
  other hand, not itself (its own finger-finger pairs stay as the file has them).
- The object: a free body at the origin, each convex part one mesh geom, its vertices
  times the grasp's scale, its mass ``object_mass_kg`` (uniform density).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import mujoco
import numpy as np

from supervisor.config.schema import ValidateSettings
from supervisor.validate.convex import read_parts
from supervisor.validate.hands import FINGER_JOINTS, SIDES, fixed_xml

TIMESTEP_S = 0.004
IMPRATIO = 10.0
NOSLIP_ITERATIONS = 2
KP = 5.0
FORCE_LIMIT = 3.0
HAND_SOLIMP = (0.5, 0.99, 1e-4)
HAND_SOLREF = (0.005, 1.0)
WELD_SOLIMP = (0.9, 0.95, 0.001, 0.5, 2.0)
WELD_DATA = (0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0)  # anchor, relpos, relquat, torquescale, -
CONTACT_BITS = {"left": (2, 4), "right": (4, 2), "object": (1, 6)}  # contype, conaffinity
OBJECT = "object"
CACHED_SCENES = 16


@dataclass
class Scene:
    """A compiled scene and where each thing lives in its model's arrays."""
    model: mujoco.MjModel
    data: mujoco.MjData
    free_adr: dict[str, int]  # each palm's free joint in qpos (position, then quaternion)
    joint_adr: dict[str, np.ndarray]  # the 22 finger joints in qpos, FINGER_JOINTS order
    actuators: dict[str, np.ndarray]  # their servos in ctrl
    mocap: dict[str, int]
    object_body: int
    object_adr: int  # the object's free joint in qpos
    owner: np.ndarray  # per geom: 0 left hand, 1 right hand, 2 object


def _options(spec: mujoco.MjSpec) -> None:
    spec.option.timestep = TIMESTEP_S
    spec.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    spec.option.disableflags |= mujoco.mjtDisableBit.mjDSBL_GRAVITY
    spec.option.cone = mujoco.mjtCone.mjCONE_ELLIPTIC
    spec.option.impratio = IMPRATIO
    spec.option.noslip_iterations = NOSLIP_ITERATIONS


def _contact(geom: mujoco.MjsGeom, owner: str, settings: ValidateSettings) -> None:
    geom.friction[:2] = [settings.friction, settings.torsional_friction]
    geom.condim = 4
    if geom.contype or geom.conaffinity:  # markers the hand file leaves out stay out
        geom.contype, geom.conaffinity = CONTACT_BITS[owner]


def _add_hand(spec: mujoco.MjSpec, xml: str, side: str, settings: ValidateSettings) -> None:
    hand = mujoco.MjSpec.from_string(xml)
    for geom in hand.geoms:
        geom.solimp[:3] = HAND_SOLIMP
        geom.solref[:2] = HAND_SOLREF
        _contact(geom, side, settings)
    root = hand.worldbody.first_body()
    palm = spec.worldbody.add_frame().attach_body(root, f"{side}/", "")
    palm.add_freejoint(name=f"{side}/free")
    spec.worldbody.add_body(name=f"{side}/mocap", mocap=True)
    weld = spec.add_equality(type=mujoco.mjtEq.mjEQ_WELD, name1=f"{side}/mocap",
                             name2=palm.name, objtype=mujoco.mjtObj.mjOBJ_BODY)
    weld.solimp = WELD_SOLIMP
    weld.data = WELD_DATA
    for name in FINGER_JOINTS:
        servo = spec.add_actuator(name=f"{side}/servo:{name}", target=f"{side}/{name}",
                                  trntype=mujoco.mjtTrn.mjTRN_JOINT)
        servo.set_to_position(kp=KP)
        servo.ctrlrange = spec.joint(f"{side}/{name}").range
        servo.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
        servo.forcerange = [-FORCE_LIMIT, FORCE_LIMIT]
        servo.forcelimited = mujoco.mjtLimited.mjLIMITED_TRUE


def _add_object(spec: mujoco.MjSpec, parts: list[np.ndarray], scale: float,
                settings: ValidateSettings) -> None:
    body = spec.worldbody.add_body(name=OBJECT)
    body.add_freejoint(name=f"{OBJECT}/free")
    for i, vertices in enumerate(parts):
        spec.add_mesh(name=f"{OBJECT}/part{i}", uservert=(vertices * scale).ravel().tolist())
        geom = body.add_geom(name=f"{OBJECT}/part{i}", type=mujoco.mjtGeom.mjGEOM_MESH,
                             meshname=f"{OBJECT}/part{i}")
        _contact(geom, OBJECT, settings)


def _indexed(model: mujoco.MjModel) -> Scene:
    def adr(name: str) -> int:
        return int(model.jnt_qposadr[model.joint(name).id])

    owner = np.full(model.ngeom, -1, np.int64)
    bodies = {model.body(f"{s}/robot0:palm").id: n for n, s in enumerate(SIDES)}
    for g in range(model.ngeom):
        body = int(model.geom_bodyid[g])
        root = int(model.body_rootid[body])
        owner[g] = 2 if model.body(body).name == OBJECT else bodies.get(root, -1)
    obj = model.body(OBJECT).id
    return Scene(
        model=model, data=mujoco.MjData(model),
        free_adr={s: adr(f"{s}/free") for s in SIDES},
        joint_adr={s: np.array([adr(f"{s}/{j}") for j in FINGER_JOINTS]) for s in SIDES},
        actuators={s: np.array([model.actuator(f"{s}/servo:{j}").id for j in FINGER_JOINTS])
                   for s in SIDES},
        mocap={s: int(model.body_mocapid[model.body(f"{s}/mocap").id]) for s in SIDES},
        object_body=obj, object_adr=adr(f"{OBJECT}/free"), owner=owner)


def compile_scene(hand_xml: dict[str, str], parts: list[np.ndarray], scale: float,
                  settings: ValidateSettings) -> Scene:
    spec = mujoco.MjSpec()
    _options(spec)
    for side in SIDES:
        _add_hand(spec, hand_xml[side], side, settings)
    _add_object(spec, parts, scale, settings)
    model = spec.compile()
    obj = model.body(OBJECT).id
    k = settings.object_mass_kg / model.body_mass[obj]  # same density everywhere: scale it
    model.body_mass[obj] *= k
    model.body_inertia[obj] *= k
    scene = _indexed(model)
    mujoco.mj_setConst(model, scene.data)
    return scene


class Scenes:
    """Compiled scenes, kept per checkout, object, scale and contact parameters (a few:
    main.py draws each grasp's scale from three values); the files are read once."""

    def __init__(self, size: int = CACHED_SCENES) -> None:
        self.size = size
        self.hands: dict[str, dict[str, str]] = {}
        self.parts: dict[tuple[str, str], list[np.ndarray]] = {}
        self.scenes: OrderedDict[tuple, Scene] = OrderedDict()

    def get(self, checkout: Path, code: str, scale: float,
            settings: ValidateSettings) -> Scene:
        where = str(Path(checkout).resolve())
        key = (where, code, float(scale), settings.friction, settings.torsional_friction,
               settings.object_mass_kg)
        if key in self.scenes:
            self.scenes.move_to_end(key)
            return self.scenes[key]
        if where not in self.hands:
            self.hands[where] = {s: fixed_xml(Path(where), s) for s in SIDES}
        if (where, code) not in self.parts:
            self.parts[(where, code)] = read_parts(Path(where), code)
        scene = compile_scene(self.hands[where], self.parts[(where, code)], scale, settings)
        self.scenes[key] = scene
        while len(self.scenes) > self.size:
            self.scenes.popitem(last=False)
        return scene
