"""The gallery (supervisor.gallery): which grasps, the meshes' motions, the pictures, the
helper's protocol against a stand-in checkout (tests/fixtures/standin-checkout), its
failures, and the cache."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from supervisor.dataset.results import QPOS_NAMES
from supervisor.gallery import meshes, picture, select
from supervisor.gallery.cache import Cache
from supervisor.gallery.client import Helper, HelperError, qpos_dict
from supervisor.gallery.drawing import Job, View, draw

STANDIN = ROOT / "tests" / "fixtures" / "standin-checkout"


def grasps(n: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = lambda: np.hstack([rng.normal(0, 0.05, (n, 3)), rng.normal(0, 0.5, (n, 3)),  # noqa
                           rng.uniform(0, 1, (n, 22))])
    return {"energy": rng.uniform(0, 5, n), "E_fc": rng.uniform(0, 1, n),
            "qpos_left": q(), "qpos_right": q(), "scale": np.full(n, 0.1),
            "seed": np.full(n, 7), "round_id": np.arange(n) // 10,
            "item_index": np.arange(n) % 10, "qpos_names": np.array(QPOS_NAMES)}


def view(tmp_path: Path, checkout: Path | None = None, timeout_s: float = 60.0,
         workers: int = 2, **env: str) -> View:
    return View(["{python}"], checkout or STANDIN / "BimanGrasp-Optimization",
                {"PYTHONPATH": str(STANDIN / "site"), **env}, timeout_s, workers)


# which grasps

def test_the_range_is_lowest_median_then_most_different() -> None:
    data = grasps()
    picked = select.spread(data, 4)
    order = np.argsort(data["energy"], kind="stable")
    assert picked[0] == (int(order[0]), "lowest energy")
    assert picked[1] == (int(order[14]), "median energy")
    features = select.pose_features(data)
    first_two = [picked[0][0], picked[1][0]]
    far = np.min([np.linalg.norm(features - features[i], axis=1) for i in first_two], axis=0)
    assert picked[2] == (int(np.argmax(far)), "most different pose")
    assert len({r for r, _ in picked}) == 4 and select.spread(data, 4) == picked


def test_identical_grasps_are_not_shown_twice() -> None:
    data = grasps(5)
    for key in ("qpos_left", "qpos_right"):
        data[key][:] = data[key][0]
    assert len(select.spread(data, 4)) == 2  # lowest and median; nothing differs


def test_show_takes_indices_or_the_best() -> None:
    data = grasps(10)
    assert select.chosen(data) == [int(np.argmin(data["energy"]))]
    assert select.chosen(data, best=3) == [int(i) for i in np.argsort(data["energy"])[:3]]
    assert select.chosen(data, [2, -1, 2]) == [2, 9]
    with pytest.raises(select.SelectError, match="--index 10 is outside 0..9"):
        select.chosen(data, [10])


# meshes

def test_a_links_motion_is_recovered_and_a_deforming_one_refused() -> None:
    rng = np.random.default_rng(1)
    v = rng.normal(size=(50, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    m, left = meshes.rigid(v, v @ q.T + [1, 2, 3])
    assert left < 1e-9 and np.allclose(m[:, :3], q) and np.allclose(m[:, 3], [1, 2, 3])
    hands = meshes.Hands({"left": [v], "right": [v]},
                         {"left": [np.array([[0, 1, 2]])], "right": [np.array([[0, 1, 2]])]})
    with pytest.raises(meshes.MeshError, match="not rigid"):
        meshes.motions(hands, {"left_v0": v * 1.1, "right_v0": v})


def test_decimation_keeps_the_shape_within_the_budget() -> None:
    n = 200
    u, w = np.meshgrid(np.linspace(0, 2 * np.pi, n), np.linspace(0.1, np.pi - 0.1, n))
    v = np.stack([np.cos(u) * np.sin(w), np.sin(u) * np.sin(w), np.cos(w)], -1).reshape(-1, 3)
    idx = np.arange(n * n).reshape(n, n)
    f = np.concatenate([np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:]], -1).reshape(-1, 3),
                        np.stack([idx[:-1, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 3)])
    dv, df = meshes.decimate(v, f, 4000)
    assert len(f) > 70_000 and 500 < len(df) <= 4000
    assert np.allclose(np.linalg.norm(dv, axis=1), 1, atol=0.1)
    assert df.max() < len(dv)


BOX = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float)
BOX_FACES = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                      [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])


def materials_of(png: bytes) -> tuple[np.ndarray, set[int]]:
    """A picture's palette indices, and the materials (colour names' indices) in it."""
    width, height = struct.unpack(">II", png[16:24])
    start = png.index(b"IDAT") + 4
    length = struct.unpack(">I", png[start - 8:start - 4])[0]
    raw = zlib.decompress(png[start:start + length])
    pixels = np.frombuffer(raw, np.uint8).reshape(height, width + 1)[:, 1:]
    return pixels, set(((pixels[pixels > 0] - 1) // picture.SHADES).tolist())  # 0: background


def test_a_picture_is_a_small_png_that_shows_its_meshes() -> None:
    box, faces = BOX, BOX_FACES
    png = picture.render([(box, faces, "object"), (box + 2, faces, "left hand")])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 10_000
    width, height = struct.unpack(">II", png[16:24])
    pixels, materials = materials_of(png)
    assert (width, height) == (picture.WIDTH, picture.HEIGHT)
    names = list(picture.COLOURS)
    assert (pixels > 0).mean() > 0.05 and materials == {names.index("object"),
                                                         names.index("left hand")}


# the helper against the stand-in checkout

def test_the_helper_draws_the_checkouts_own_vertices(tmp_path: Path) -> None:
    data = grasps(3)
    v = view(tmp_path)
    helper = Helper(v.command, v.cwd, v.env, v.timeout_s)
    try:
        hands_answer = helper.request(op="hands")
        assert hands_answer["variant"] == "fork"
        hands = meshes.Hands.from_arrays(helper.load(hands_answer["path"]))
        qpos = {s: qpos_dict(data[f"qpos_{s}"][1], QPOS_NAMES) for s in meshes.SIDES}
        drawn = helper.load(helper.request(op="grasp", id="x", qpos_left=qpos["left"],
                                           qpos_right=qpos["right"])["path"])
    finally:
        helper.close()
    motion = meshes.motions(hands, drawn)
    for side in meshes.SIDES:
        posed, _ = meshes.posed(hands, side, motion[side])
        direct = np.concatenate([drawn[f"{side}_v{i}"] for i in range(3)])
        assert np.abs(posed - direct).max() < 1e-5  # what the checkout itself draws
    # the palm (no joint) sits where the wrist's qpos puts it: the helper's pose
    # conversion (Euler angles -> 6D) is visualization.py's
    at, rot = meshes.wrist(data["qpos_left"][1], list(QPOS_NAMES))
    assert np.allclose(drawn["left_v0"], hands.vertices["left"][0] @ rot.T + at, atol=1e-5)


def test_the_public_releases_layout_is_recognised(tmp_path: Path) -> None:
    checkout = tmp_path / "upstream" / "BimanGrasp-Optimization"
    shutil.copytree(STANDIN / "BimanGrasp-Optimization", checkout)
    (checkout / "utils" / "config.py").unlink()
    v = view(tmp_path, checkout)
    helper = Helper(v.command, v.cwd, v.env, v.timeout_s)
    try:
        assert helper.request(op="hands")["variant"] == "upstream"
    finally:
        helper.close()


def jobs(n_objects: int = 3) -> list[Job]:
    return [Job(f"obj_{i}", grasps(12, i), [0, 5, 7]) for i in range(n_objects)]


def test_objects_are_drawn_in_parallel_and_cached(tmp_path: Path) -> None:
    first = draw(view(tmp_path), tmp_path, jobs())
    assert first.note is None and first.helpers == 2
    assert all(m is not None for j in first.jobs for m in j.motions)
    assert all(j.mesh is not None and j.mesh[2] == "checkout" for j in first.jobs)
    again = draw(view(tmp_path), tmp_path, jobs())
    assert again.helpers == 0  # all from the cache
    for a, b in zip(first.jobs, again.jobs):
        assert all(np.array_equal(x[s], y[s]) for x, y in zip(a.motions, b.motions)
                   for s in meshes.SIDES)
    more = jobs()
    more[0].rows.append(9)
    more[0].__post_init__()
    files = Cache(tmp_path).describe()["files"]
    assert draw(view(tmp_path), tmp_path, more).helpers == 1  # only the new grasp
    assert Cache(tmp_path).describe()["files"] == files + 1
    shutil.rmtree(tmp_path / "gallery-cache")  # safe to delete: drawn again
    assert draw(view(tmp_path), tmp_path, jobs()).helpers == 2


def test_no_hand_model_says_so_and_keeps_what_the_data_gives(tmp_path: Path) -> None:
    mesh = tmp_path / "data" / "meshdata" / "obj_0" / "coacd"
    mesh.mkdir(parents=True)
    (mesh / "decomposed.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\n"
                                         "f 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n")
    empty = tmp_path / "BimanGrasp-Optimization"
    empty.mkdir()
    drawn = draw(view(tmp_path, empty), tmp_path, jobs(2))
    assert drawn.hands is None and "utils/hand_model.py is missing" in drawn.note
    assert drawn.jobs[0].mesh[2] == "meshdata" and drawn.jobs[1].mesh is None
    assert all(m is None for j in drawn.jobs for m in j.motions)


@pytest.mark.parametrize("fault, expected", [
    ("load", "hand model failed to load"),
    ("grasp", "this pose cannot be set"),
    ("crash", "ended (exit 3)"),
    ("hang", "did not answer while drawing grasp within 3 s"),
])
def test_a_failing_helper_costs_one_line_not_the_page(tmp_path: Path, fault: str,
                                                      expected: str) -> None:
    drawn = draw(view(tmp_path, timeout_s=3.0, workers=1, STANDIN_FAULT=fault), tmp_path,
                 jobs(2))
    lines = ([drawn.note] if drawn.note else []) + [n for j in drawn.jobs for n in j.notes]
    assert lines and all("\n" not in x for x in lines)
    assert any(expected in x for x in lines), lines
    assert all(j.mesh is not None or fault == "load" for j in drawn.jobs)


def test_a_missing_object_mesh_still_draws_the_hands(tmp_path: Path) -> None:
    drawn = draw(view(tmp_path, STANDIN_FAULT="object"), tmp_path, jobs(1))
    job = drawn.jobs[0]
    assert job.mesh is None and any("no mesh for obj_0" in n for n in job.notes)
    assert all(m is not None for m in job.motions)


def test_a_helper_that_cannot_start_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(HelperError, match="cannot start the gallery's helper with "
                                          "'/nonexistent/python'.*\\[view\\] command"):
        Helper(["/nonexistent/python"], STANDIN / "BimanGrasp-Optimization", {}, 5.0)


# found by a tester

def test_a_torn_cache_file_is_drawn_again(tmp_path: Path) -> None:
    draw(view(tmp_path), tmp_path, jobs(1))
    for path in (tmp_path / "gallery-cache").rglob("*.npz"):
        path.write_bytes(path.read_bytes()[:100])
    again = draw(view(tmp_path), tmp_path, jobs(1))
    assert again.hands is not None and all(m is not None for m in again.jobs[0].motions)
    assert again.helpers == 1


def test_helpers_leave_no_temporary_folder(tmp_path: Path) -> None:
    import tempfile

    def folders() -> set[str]:
        return {p.name for p in Path(tempfile.gettempdir()).glob("supervisor-gallery-*")}

    before = folders()
    empty = tmp_path / "BimanGrasp-Optimization"
    empty.mkdir()
    draw(view(tmp_path, empty), tmp_path, jobs(1))  # the helper refuses at once
    draw(view(tmp_path, STANDIN_FAULT="crash", workers=1), tmp_path / "b", jobs(1))
    gone = draw(view(tmp_path, tmp_path / "moved"), tmp_path / "c", jobs(1))  # no checkout
    assert "[view] cwd" in gone.note and "is not a folder" in gone.note
    assert folders() == before


def test_a_helper_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys, time; from pathlib import Path\n"
              "from supervisor.gallery.client import Helper\n"
              f"h = Helper(['{sys.executable}'], Path('{STANDIN / 'BimanGrasp-Optimization'}'),"
              f" {{'PYTHONPATH': '{STANDIN / 'site'}', 'STANDIN_FAULT': 'hang'}}, 60)\n"
              "h.request(op='hands')\n"  # then a grasp that hangs: it no longer reads stdin
              "h.proc.stdin.write('{\"op\": \"grasp\", \"id\": \"x\", \"qpos_left\": "
              "{\"WRJTx\": 0.1}, \"qpos_right\": {\"WRJTx\": 0.1}}\\n')\n"
              "h.proc.stdin.flush(); time.sleep(1)\n"
              "print(h.proc.pid, flush=True); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    helper = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(100):
        try:
            with open(f"/proc/{helper}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(helper, signal.SIGKILL)
        pytest.fail("the helper outlived the process that started it")


def test_odd_object_codes_are_links_that_work() -> None:
    from supervisor.gallery.build import _url

    assert _url("x#y?z%20w&<-0.png") == "x%23y%3Fz%2520w%26%3C-0.png"


def test_a_cache_that_cannot_be_written_keeps_what_was_drawn(tmp_path: Path,
                                                             monkeypatch) -> None:
    """Found by a tester (#25): a read-only gallery-cache/ made the drawing report
    "grasps not drawn" or fail to start the hands. (Tests run as root, where chmod does
    not stop a write: the cache's write fails as it would there.)"""
    from supervisor.gallery import cache as cache_module

    def refuse(path: Path, payload: bytes) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache_module, "atomic_write_bytes", refuse)
    drawn = draw(view(tmp_path), tmp_path, jobs(2))
    assert drawn.note is None and drawn.hands is not None
    assert all(m is not None for j in drawn.jobs for m in j.motions)
    assert all(j.mesh is not None and j.mesh[2] == "checkout" and not j.notes
               for j in drawn.jobs)
    assert drawn.cache.problem is not None and "\n" not in drawn.cache.problem
    assert "gallery cache not written" in drawn.cache.problem
    assert "Permission denied" in drawn.cache.problem
    assert Cache(tmp_path).describe()["files"] == 0


# which hand is which (found by a tester, #25: both hands were the same grey, unnamed)

def test_a_picture_tells_the_left_hand_from_the_right(tmp_path: Path) -> None:
    from supervisor.gallery.build import _parts

    names = list(picture.COLOURS)
    left, right = (picture.render([(BOX, BOX_FACES, f"{s} hand")]) for s in meshes.SIDES)
    assert left != right and picture.COLOURS["left hand"] != picture.COLOURS["right hand"]
    drawn = draw(view(tmp_path), tmp_path, jobs(1))
    job = drawn.jobs[0]
    parts = _parts(drawn, job, 0, job.rows[0])
    assert [c for _, _, c in parts] == ["object", "left hand", "right hand"]
    assert materials_of(picture.render(parts))[1] == {
        names.index("object"), names.index("left hand"), names.index("right hand")}
    empty = tmp_path / "none" / "BimanGrasp-Optimization"
    empty.mkdir(parents=True)
    wrists = draw(view(tmp_path, empty), tmp_path / "none", jobs(1))
    colours = [c for _, _, c in _parts(wrists, wrists.jobs[0], 0, wrists.jobs[0].rows[0])]
    assert {"left hand", "right hand"} <= set(colours)  # each wrist marked by its side
    assert "left" in picture.KEY and "right" in picture.KEY  # the report's key


def test_the_3d_views_name_each_hand(tmp_path: Path) -> None:
    import json
    import subprocess

    from supervisor.gallery import page

    drawn = draw(view(tmp_path), tmp_path, jobs(1))
    job = drawn.jobs[0]
    html = page.build(drawn, job, ["a", "b", "c"], "", True)
    data = json.loads(html.split('id="grasps">', 1)[1].split("</script>", 1)[0]
                      .replace("<\\/", "</"))
    assert {s: data["sides"][s]["name"] for s in meshes.SIDES} == {
        "left": "left hand", "right": "right hand"}
    assert data["sides"]["left"]["color"] != data["sides"]["right"]["color"]
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node: the page's script is not run (the Chromium test runs it)")
    (tmp_path / "script.js").write_text(page.SCRIPT)
    (tmp_path / "hands.js").write_text(page.hands_script(drawn))
    (tmp_path / "data.json").write_text(json.dumps(data))
    proc = subprocess.run([node, str(ROOT / "tests/fixtures/gallery-page-harness.js"),
                           *(str(tmp_path / n) for n in ("script.js", "hands.js", "data.json"))],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    views = json.loads(proc.stdout)
    assert len(views) == 3 and all(v["legend"] for v in views)
    hands = [t for t in views[0]["traces"] if t["type"] == "mesh3d" and t["name"] != "object"]
    assert [(t["name"], t["legend"], t["hover"]) for t in hands] == [
        ("left hand", True, "name"), ("right hand", True, "name")]
    assert hands[0]["color"] != hands[1]["color"]
