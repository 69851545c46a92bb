"""The built-in validator on a real BimanGrasp checkout, skipped unless
``BIMANGRASP_CHECKOUT`` names its ``BimanGrasp-Optimization`` folder (fork or public
release): its own hands and object files, and real main.py output from
tests/fixtures/bimangrasp-fork/.

- MuJoCo's hand geometry against the checkout's own forward kinematics (``HandModel``,
  run by tests/bimangrasp_fk.py under ``BIMANGRASP_PYTHON``, the checkout's Python with
  torch): every link frame and fingertip of both hands, and the object's vertices, well
  under a millimetre apart (measured: about 2e-5 mm).
- Short runs (50 iterations) are far from converged: every grasp is rejected by the
  10 mm initial-penetration gate, and deterministically so.
- Converged grasps (2,000 iterations, tests/fixtures/bimangrasp-fork/converged/): none
  passes the gate (11.8-19.3 mm); with the gate off 2 of 4 pass.

Run with ``-s`` to see the figures."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mujoco
import numpy as np
import pytest
from scipy.spatial import cKDTree

from conftest import FIXTURES, ROOT
from supervisor.config.schema import ValidateSettings
from supervisor.dataset.results import load_items
from supervisor.validate import builtin, protocol
from supervisor.validate.hands import SIDES
from supervisor.validate.pose import hand_pose
from supervisor.validate.scene import Scenes

CHECKOUT = Path(os.environ["BIMANGRASP_CHECKOUT"]) if os.environ.get(
    "BIMANGRASP_CHECKOUT") else None
PYTHON = os.environ.get("BIMANGRASP_PYTHON")
CODE = "Curver_Storage_Bin_Black_Small"
SHORT = FIXTURES / "results" / "probe2" / f"{CODE}.npy"  # 8 grasps, 50 iterations
FK_GRASPS = 3
FK_TOLERANCE_M = 1e-6  # "well under a millimetre": a thousandth of one
FK_TOLERANCE_DEG = 1e-3
SETTINGS = ValidateSettings(kind="mujoco")

pytestmark = pytest.mark.skipif(CHECKOUT is None, reason="BIMANGRASP_CHECKOUT is not set "
                                "(a real BimanGrasp-Optimization folder)")


def checkout_fk(tmp_path: Path, grasps: list[dict]) -> dict:
    """tests/bimangrasp_fk.py's frames, run by the checkout's Python in the checkout."""
    request = {"grasps": [{f"qpos_{s}": {k: float(v) for k, v in g[f"qpos_{s}"].items()}
                           for s in SIDES} for g in grasps],
               "object": CODE, "scale": float(grasps[0]["scale"])}
    (tmp_path / "fk.json").write_text(json.dumps(request))
    proc = subprocess.run([PYTHON, str(ROOT / "tests" / "bimangrasp_fk.py"),
                           str(tmp_path / "fk.json"), str(tmp_path / "out.json")],
                          cwd=CHECKOUT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((tmp_path / "out.json").read_text())


def mujoco_frames(grasp: dict) -> tuple[dict, np.ndarray]:
    """Per hand, every body's (origin, rotation) and every site's position in the
    validator's scene with the grasp's joints (no pregrasp); the object's vertices."""
    scene = Scenes().get(CHECKOUT, CODE, float(grasp["scale"]), SETTINGS)
    m, d = scene.model, scene.data
    poses = {s: hand_pose(grasp[f"qpos_{s}"], s) for s in SIDES}
    mujoco.mj_resetData(m, d)
    protocol._place(scene, poses, 1.0)
    mujoco.mj_kinematics(m, d)
    hands: dict[str, dict] = {s: {"bodies": {}, "sites": {}} for s in SIDES}
    for b in range(m.nbody):
        side, _, name = m.body(b).name.partition("/")
        if side in hands and name.startswith("robot0:"):
            hands[side]["bodies"][name] = (d.xpos[b].copy(), d.xmat[b].reshape(3, 3).copy())
    for i in range(m.nsite):
        side, _, name = m.site(i).name.partition("/")
        if side in hands:
            hands[side]["sites"][name] = d.site_xpos[i].copy()
    verts = []
    for g in np.flatnonzero(scene.owner == 2):
        mesh = m.geom_dataid[g]
        v = m.mesh_vert[m.mesh_vertadr[mesh]:m.mesh_vertadr[mesh] + m.mesh_vertnum[mesh]]
        verts.append(d.geom_xpos[g] + v @ d.geom_xmat[g].reshape(3, 3).T)
    return hands, np.concatenate(verts)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """The angle between two rotations, from sine and cosine (arccos of the cosine alone
    turns the checkout's float32 rounding, 1e-7, into 0.03 degrees)."""
    r = a.T @ b
    sin = np.linalg.norm([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]]) / 2.0
    return float(np.degrees(np.arctan2(sin, (np.trace(r) - 1.0) / 2.0)))


@pytest.mark.skipif(not PYTHON, reason="BIMANGRASP_PYTHON is not set (the checkout's "
                    "Python, with torch)")
def test_mujocos_hands_are_where_the_checkouts_own_kinematics_puts_them(
        tmp_path: Path) -> None:
    grasps = [g for g in load_items(SHORT)[:FK_GRASPS]]
    theirs = checkout_fk(tmp_path, grasps)
    worst_m = worst_deg = 0.0
    compared = 0
    for grasp, fk in zip(grasps, theirs["grasps"]):
        ours, verts = mujoco_frames(grasp)
        for side in SIDES:
            links = fk[side]["links"]
            for name, (origin, rot) in ours[side]["bodies"].items():
                frame = links.get(f"{name}_child", links[name])  # after the joint
                worst_m = max(worst_m, float(np.abs(origin - frame[:3]).max()))
                worst_deg = max(worst_deg, angle_deg(rot, np.reshape(frame[3:], (3, 3))))
                compared += 1
            for name, pos in fk[side]["tips"].items():
                worst_m = max(worst_m, float(np.abs(ours[side]["sites"][name] - pos).max()))
                compared += 1
    object_m = 0.0
    theirs_v = np.array(theirs["object_vertices"])
    ours_v = mujoco_frames(grasps[0])[1]
    for a, b in ((ours_v, theirs_v), (theirs_v, ours_v)):
        object_m = max(object_m, float(cKDTree(b).query(a)[0].max()))
    print(f"\n{theirs['variant']} checkout {CHECKOUT}: {compared} frames of {len(grasps)} "
          f"grasps, largest difference {worst_m * 1000:.2g} mm, {worst_deg:.2g} deg; object "
          f"vertices {object_m * 1000:.2g} mm ({len(ours_v)} in MuJoCo)")
    assert compared >= len(grasps) * 2 * 20  # every body of both hands, and the tips
    assert worst_m < FK_TOLERANCE_M and worst_deg < FK_TOLERANCE_DEG
    assert object_m < FK_TOLERANCE_M


def test_short_runs_are_rejected_by_the_penetration_gate_deterministically() -> None:
    grasps = list(load_items(SHORT))
    cols = builtin.check(CHECKOUT, CODE, grasps, SETTINGS)
    again = builtin.check(CHECKOUT, CODE, grasps[::-1], SETTINGS)
    print("\n50 iterations: initial penetration (mm)",
          np.round(cols["penetration_m"] * 1000, 1).tolist(), "reasons",
          cols["fail_reason"].tolist())
    assert not cols["passed"].any()
    assert set(cols["fail_reason"].tolist()) == {"penetration"}
    assert (cols["penetration_m"] > SETTINGS.max_penetration_m).all()
    for key in builtin.COLUMNS:
        assert cols[key].tobytes() == again[key][::-1].tobytes(), key


CONVERGED = FIXTURES / "converged" / f"{CODE}.npy"  # 4 grasps, 2,000 iterations, seed 11


def test_converged_grasps_figures_as_measured_on_the_cpu_build() -> None:
    """None passes the 10 mm gate after 2,000 iterations (the paper runs 10,000); with
    the gate off two of four hold against the force in all six directions."""
    grasps = list(load_items(CONVERGED))
    cols = builtin.check(CHECKOUT, CODE, grasps, SETTINGS)
    np.testing.assert_allclose(cols["penetration_m"] * 1000, [17.92, 16.53, 19.31, 11.81],
                               atol=0.01)
    assert cols["fail_reason"].tolist() == ["penetration"] * 4
    ungated = builtin.check(CHECKOUT, CODE, grasps, ValidateSettings(
        kind="mujoco", max_penetration_m=1.0))
    print("\n2,000 iterations, gate off:", ungated["fail_reason"].tolist(),
          np.round(ungated["max_translation_m"] * 1000, 2).tolist(), "mm",
          np.round(ungated["max_rotation_deg"], 2).tolist(), "deg")
    assert ungated["passed"].tolist() == [True, True, False, False]
    assert ungated["fail_reason"].tolist() == ["", "", "rotation", "translation"]
