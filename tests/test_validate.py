"""The built-in validator (supervisor.validate) on the stand-in checkout: the hand files'
traps and their fixes, the pose convention, the object's convex parts, the scene, the
protocol (a box clamped between the palms passes; hands apart, a gap, a grasp deep in
the box and a diverged simulation fail, each for its reason), determinism within a
process, ``check``'s columns and errors, ``check_setup``'s messages."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import mujoco
import numpy as np
import pytest

from validate_grasps import BOX, STANDIN, clamp, hand
from supervisor.config.schema import ValidateSettings
from supervisor.validate import builtin, convex, hands, pose, protocol, scene
from supervisor.validate.builtin import ValidateError, check, check_setup, settings_from

SETTINGS = ValidateSettings(kind="mujoco")


@pytest.fixture(autouse=True)
def _quiet_mujoco():
    """protocol.simulate is called here without check(), which silences MuJoCo's warnings
    (else each lands in ./MUJOCO_LOG.TXT)."""
    before = mujoco.get_mju_user_warning()
    builtin.quiet_mujoco()
    yield
    mujoco.set_mju_user_warning(before)


def standin_scene(settings: ValidateSettings = SETTINGS, scale: float = 1.0) -> scene.Scene:
    return scene.Scenes().get(STANDIN, BOX, scale, settings)


def poses(grasp: dict) -> dict[str, pose.HandPose]:
    return {side: pose.hand_pose(grasp[f"qpos_{side}"], side) for side in hands.SIDES}


def copy_checkout(tmp_path: Path) -> Path:
    shutil.copytree(STANDIN.parent, tmp_path / "co", ignore=shutil.ignore_patterns("site"))
    return tmp_path / "co" / "BimanGrasp-Optimization"


# -- the hand files ------------------------------------------------------------------

def test_the_hand_files_do_not_compile_as_they_are_and_do_once_fixed() -> None:
    with pytest.raises(ValueError, match="apirate"):
        mujoco.MjModel.from_xml_path(str(hands.mjcf_path(STANDIN, "right")))
    for side in hands.SIDES:
        model = mujoco.MjModel.from_xml_string(hands.fixed_xml(STANDIN, side))
        names = [model.joint(j).name for j in range(model.njnt)]
        assert tuple(names) == hands.FINGER_JOINTS
        assert model.nu == model.nsensor == model.ntendon == model.nmesh == 0


def test_every_joint_gets_the_class_that_holds_armature_and_damping() -> None:
    model = mujoco.MjModel.from_xml_string(hands.fixed_xml(STANDIN, "right"))
    assert (model.dof_armature == 0.001).all() and (model.dof_damping == 0.1).all()


def test_the_left_hands_ranges_are_negated_as_bimangrasps_hand_model_does() -> None:
    left, right = (mujoco.MjModel.from_xml_string(hands.fixed_xml(STANDIN, s))
                   for s in ("left", "right"))
    assert np.array_equal(left.jnt_range, -right.jnt_range[:, ::-1])
    assert hands._negate_range("0 1.571") == "-1.571 -0.0"


def test_the_marker_boxes_no_longer_collide() -> None:
    fixed = hands.fixed_xml(STANDIN, "right")
    for xml, contacts in ((fixed, 0), (fixed.replace('contype="0" conaffinity="0"', ""), 4)):
        model = mujoco.MjModel.from_xml_string(xml)
        data = mujoco.MjData(model)
        mujoco.mj_forward(model, data)
        assert data.ncon == contacts  # with the marker: 1.5 mm into the palm at rest


def test_a_missing_or_foreign_hand_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(hands.HandError, match="left_shadow_hand.xml: no such file"):
        hands.fixed_xml(tmp_path, "left")
    checkout = copy_checkout(tmp_path)
    path = hands.mjcf_path(checkout, "right")
    path.write_text(path.read_text().replace('name="robot0:THJ0"', 'name="robot0:WRJ0"'))
    with pytest.raises(hands.HandError, match="22 finger joints"):
        hands.fixed_xml(checkout, "right")
    path.write_text("<mujoco><worldbody>")
    with pytest.raises(hands.HandError, match="unreadable MJCF"):
        hands.fixed_xml(checkout, "right")


# -- the pose convention -------------------------------------------------------------

@pytest.mark.parametrize("angles", [(0.3, -1.2, 2.5), (1.0, 0.2, -0.4), (-2.9, 1.5, 3.1),
                                    (math.pi, 0.0, 0.0), (0.0, 0.0, -math.pi)])
def test_euler_angles_are_static_xyz_and_the_quaternion_matches(angles) -> None:
    ax, ay, az = angles

    def turn(axis: int, a: float) -> np.ndarray:
        m = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        m[i, i] = m[j, j] = math.cos(a)
        m[i, j], m[j, i] = -math.sin(a), math.sin(a)
        return m if axis != 1 else m.T  # about y the sines swap sides

    rot = pose.euler_sxyz(ax, ay, az)
    assert np.allclose(rot, turn(2, az) @ turn(1, ay) @ turn(0, ax), atol=1e-12)
    back = np.zeros(9)
    mujoco.mju_quat2Mat(back, pose.mat2quat(rot))
    assert np.allclose(back.reshape(3, 3), rot, atol=1e-12)


def test_a_hand_pose_without_a_joint_or_with_junk_is_refused() -> None:
    qpos = hand(0.1)
    assert pose.hand_pose(qpos, "left").joints.shape == (22,)
    for change, match in (({"robot0:FFJ2": "x"}, "not a number"),
                          ({"WRJTx": math.nan}, "not finite")):
        with pytest.raises(pose.PoseError, match=match):
            pose.hand_pose({**qpos, **change}, "left")
    del qpos["WRJRz"]
    with pytest.raises(pose.PoseError, match="qpos_left has no 'WRJRz'"):
        pose.hand_pose(qpos, "left")


def test_the_angle_of_a_quaternion() -> None:
    half = math.radians(10)
    assert pose.quat_angle_deg(np.array([math.cos(half), 0, math.sin(half), 0])) == \
        pytest.approx(20.0)
    assert pose.quat_angle_deg(-np.array([math.cos(half), math.sin(half), 0, 0])) == \
        pytest.approx(20.0)  # q and -q are the same turn


# -- the object ----------------------------------------------------------------------

def test_the_object_is_read_as_its_convex_parts(tmp_path: Path) -> None:
    parts = convex.read_parts(STANDIN, BOX)
    assert [p.shape for p in parts] == [(8, 3), (8, 3)]
    with pytest.raises(convex.ObjectError, match="no such file"):
        convex.read_parts(STANDIN, "no_such_object")
    checkout = copy_checkout(tmp_path)
    path = convex.mesh_path(checkout, BOX)
    path.write_text("o a\nv 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(convex.ObjectError, match="fewer than 4 vertices"):
        convex.read_parts(checkout, BOX)
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n")  # no o line: one part
    assert len(convex.read_parts(checkout, BOX)) == 1


# -- the scene -----------------------------------------------------------------------

def test_the_scene_has_dexgraspbenchs_options_and_a_fully_set_weld() -> None:
    sc = standin_scene()
    m = sc.model
    assert m.opt.timestep == 0.004 and m.opt.impratio == 10 and m.opt.noslip_iterations == 2
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    assert m.opt.cone == mujoco.mjtCone.mjCONE_ELLIPTIC
    assert m.opt.disableflags & mujoco.mjtDisableBit.mjDSBL_GRAVITY
    assert np.array_equal(m.eq_data, np.array([scene.WELD_DATA] * 2, np.float64))
    assert m.body_mass[sc.object_body] == pytest.approx(SETTINGS.object_mass_kg)
    assert (m.actuator_gainprm[:, 0] == 5).all() and (m.actuator_forcerange == [-3, 3]).all()
    assert np.array_equal(m.actuator_ctrlrange, m.jnt_range[m.actuator_trnid[:, 0]])


def test_the_palms_sit_at_the_wrist_pose_and_stay_there() -> None:
    sc = standin_scene()
    grasp = poses(clamp(squeeze_m=-0.02))
    mujoco.mj_resetData(sc.model, sc.data)
    protocol._place(sc, grasp, 1.0)
    mujoco.mj_step(sc.model, sc.data, nstep=100)
    for side in hands.SIDES:
        palm = sc.data.body(f"{side}/robot0:palm")
        assert np.abs(palm.xpos - grasp[side].position).max() < 1e-4  # the weld holds
        turn = np.zeros(4)
        mujoco.mju_mulQuat(turn, grasp[side].quat * [1, -1, -1, -1], palm.xquat)
        assert pose.quat_angle_deg(turn) < 0.01


def test_the_two_hands_collide_with_each_other() -> None:
    sc = standin_scene()
    overlapping = {side: pose.hand_pose(hand(0.0, y=0.3), side) for side in hands.SIDES}
    mujoco.mj_resetData(sc.model, sc.data)
    protocol._place(sc, overlapping, 1.0)
    mujoco.mj_forward(sc.model, sc.data)
    owners = {tuple(sorted(sc.owner[g])) for g in sc.data.contact.geom[:sc.data.ncon]}
    assert (0, 1) in owners and protocol.penetration(sc) > 0.01


# -- the protocol --------------------------------------------------------------------

def test_a_box_clamped_between_the_palms_holds() -> None:
    out = protocol.simulate(standin_scene(), poses(clamp()), SETTINGS)
    assert out.passed and out.fail_reason == ""
    assert out.max_translation_m < 0.002 and out.max_rotation_deg < 1.0
    assert out.penetration_m == pytest.approx(0.0015, abs=1e-6)


@pytest.mark.parametrize("squeeze_m, reason", [(-0.3, "translation"), (-0.005, "translation")])
def test_hands_away_from_the_box_let_it_go(squeeze_m: float, reason: str) -> None:
    out = protocol.simulate(standin_scene(), poses(clamp(squeeze_m)), SETTINGS)
    assert not out.passed and out.fail_reason == reason
    assert out.max_translation_m >= SETTINGS.max_translation_m


def test_a_grasp_deep_in_the_object_is_rejected_before_simulating() -> None:
    out = protocol.simulate(standin_scene(), poses(clamp(squeeze_m=0.03)), SETTINGS)
    assert (out.passed, out.fail_reason) == (False, "penetration")
    assert out.penetration_m == pytest.approx(0.03, abs=1e-6)
    assert math.isnan(out.max_translation_m) and math.isnan(out.max_rotation_deg)
    looser = ValidateSettings(kind="mujoco", max_penetration_m=0.05)
    assert protocol.simulate(standin_scene(looser), poses(clamp(0.03)), looser).fail_reason \
        != "penetration"


def test_the_simulation_starts_with_the_fingers_open_to_the_pregrasp() -> None:
    bent = {"robot0:FFJ2": 1.2}  # the right forefinger bends into the box at the grasp
    sc = standin_scene()
    mujoco.mj_resetData(sc.model, sc.data)
    protocol._place(sc, poses(clamp(right=bent)), pose.PREGRASP)
    assert sc.data.qpos[sc.joint_adr["right"][1]] == pytest.approx(0.9 * 1.2)


def test_a_diverged_simulation_fails_and_never_passes(monkeypatch) -> None:
    def unstable() -> scene.Scene:
        sc = standin_scene()
        sc.model.dof_damping[:] = -1e6  # absurd: every joint pushes itself on
        return sc

    out = protocol.simulate(unstable(), poses(clamp()), SETTINGS)
    assert (out.passed, out.fail_reason) == (False, "diverged")
    assert math.isnan(out.max_translation_m) and math.isnan(out.max_rotation_deg)
    # the trap: MuJoCo resets a diverged state, so the object "did not move"
    monkeypatch.setattr(protocol, "_step", lambda sc, n: mujoco.mj_step(sc.model, sc.data,
                                                                        nstep=n))
    monkeypatch.setattr(protocol, "DIRECTIONS", protocol.DIRECTIONS[:1])
    monkeypatch.setattr(protocol, "BLOCKS", 1)
    naive = protocol.simulate(unstable(), poses(clamp()), SETTINGS)
    assert naive.passed and naive.max_translation_m < 1e-5


def test_each_direction_from_a_copy_of_the_closed_state_is_a_full_replay() -> None:
    """protocol closes the hands once; DexGraspBench closes them again per direction."""
    sc, grasp = standin_scene(), poses(clamp())
    m, d = sc.model, sc.data

    def closed() -> None:
        mujoco.mj_resetData(m, d)
        protocol._place(sc, grasp, pose.PREGRASP)
        mujoco.mj_forward(m, d)
        protocol._close(sc, grasp)

    closed()
    state = np.empty(mujoco.mj_stateSize(m, protocol.STATE))
    mujoco.mj_getState(m, d, state, protocol.STATE)
    mujoco.mj_step(m, d, nstep=120)  # a direction run, to be undone
    mujoco.mj_setState(m, d, state, protocol.STATE)
    d.xfrc_applied[sc.object_body, 1] = -1.0
    mujoco.mj_step(m, d, nstep=50)
    restored = d.qpos.copy()
    closed()
    d.xfrc_applied[sc.object_body, 1] = -1.0
    mujoco.mj_step(m, d, nstep=50)
    assert restored.tobytes() == d.qpos.tobytes()


def test_the_left_hand_holds_its_negative_joints() -> None:
    sc, bent = standin_scene(), {"robot0:FFJ2": -0.4, "robot0:FFJ1": -0.3}
    grasp = poses(clamp(squeeze_m=-0.1, left=bent))
    mujoco.mj_resetData(sc.model, sc.data)
    protocol._place(sc, grasp, pose.PREGRASP)
    protocol._close(sc, grasp)
    held = sc.data.qpos[sc.joint_adr["left"][1:3]]
    assert np.allclose(held, [-0.44, -0.33], atol=0.02)  # the squeeze, not a range's end


# -- check ---------------------------------------------------------------------------

def test_check_gives_the_five_columns_in_the_items_order() -> None:
    items = [clamp(-0.3), clamp(0.03), clamp()]
    cols = check(STANDIN, BOX, items, SETTINGS)
    assert list(cols) == list(builtin.COLUMNS)
    assert cols["passed"].dtype == bool and cols["fail_reason"].dtype == np.dtype("<U16")
    assert all(cols[k].dtype == np.float64 for k in builtin.COLUMNS[1:4])
    assert cols["passed"].tolist() == [False, False, True]
    assert cols["fail_reason"].tolist() == ["translation", "penetration", ""]


def test_a_grasps_figures_do_not_depend_on_the_others_nor_on_their_order() -> None:
    a, b = clamp(0.001), clamp(-0.005)
    both = check(STANDIN, BOX, [b, a], SETTINGS)
    builtin._SCENES.scenes.clear()
    alone = check(STANDIN, BOX, [a], SETTINGS)
    for key in builtin.COLUMNS:
        assert both[key][1:].tobytes() == alone[key].tobytes(), key


def test_check_names_a_bad_grasp() -> None:
    bad = clamp()
    del bad["qpos_left"]["robot0:LFJ0"]
    with pytest.raises(ValidateError, match="grasp 1: qpos_left has no 'robot0:LFJ0'"):
        check(STANDIN, BOX, [clamp(-0.3), bad], SETTINGS)
    with pytest.raises(ValidateError, match="grasp 0: scale 0.0"):
        check(STANDIN, BOX, [clamp(scale=0.0)], SETTINGS)
    with pytest.raises(ValidateError, match="grasp 0 is a list"):
        check(STANDIN, BOX, [[1, 2]], SETTINGS)
    with pytest.raises(ValidateError, match="no_such_object"):
        check(STANDIN, "no_such_object", [clamp()], SETTINGS)


def test_settings_travel_as_the_protocols_dict() -> None:
    settings = ValidateSettings(kind="mujoco", max_penetration_m=0.02, force_n=2)
    assert settings_from(settings.protocol()) == ValidateSettings(
        kind="mujoco", **{**settings.protocol(), "force_n": 2.0})
    for bad, match in (({"mass": 1.0}, "unknown key"), ({"force_n": -1}, "force_n must"),
                       ({"friction": "0.6"}, "friction must"),
                       ({"max_rotation_deg": math.inf}, "finite")):
        with pytest.raises(ValidateError, match=match):
            settings_from(bad)


# -- check_setup ---------------------------------------------------------------------

def test_check_setup_names_what_is_missing_and_the_fix(tmp_path: Path) -> None:
    assert check_setup(STANDIN, [BOX]) is None
    assert "is not a folder" in check_setup(tmp_path / "nowhere", [BOX])
    checkout = copy_checkout(tmp_path)
    assert "no_such_object/coacd/decomposed.obj" in check_setup(checkout, [BOX, "no_such_object"])
    assert "and 1 more" in check_setup(checkout, ["x1", "x2"])
    convex.mesh_path(checkout, BOX).write_text("o a\nv 0 0 0\n")
    assert "fewer than 4 vertices" in check_setup(checkout, [BOX])
    hands.mjcf_path(checkout, "left").unlink()
    line = check_setup(checkout, [BOX])
    assert "left_shadow_hand.xml: no such file" in line and "[main] cwd" in line
    assert "\n" not in line
