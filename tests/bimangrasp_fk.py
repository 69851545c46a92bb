"""The checkout's own forward kinematics, for tests/test_validate_real.py: run under
BimanGrasp's Python (``BIMANGRASP_PYTHON``, the one with torch) in its
``BimanGrasp-Optimization`` folder, it imports nothing of the supervisor's package (only
the gallery's standalone helper.py, by its path).

    python tests/bimangrasp_fk.py REQUEST.json OUT.json

REQUEST: {"grasps": [{"qpos_left": {...}, "qpos_right": {...}}, ...], "object": CODE,
"scale": S}. OUT: per grasp and hand, every link frame of the checkout's ``HandModel``
in the object's frame ({"link": [origin (3), rotation (9, rows)]}) and each fingertip
site (``robot0:S_*tip`` of the MJCF, placed on its link); the object's vertices times S
as the checkout's ``ObjectModel`` loads them; and which variant it is (fork or upstream).
"""

import importlib.util
import json
import os
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.getcwd())
sys.path.append(os.path.dirname(os.getcwd()))

import torch  # noqa: E402

if not torch.cuda.is_available():  # the public release calls .cuda() in places
    torch.Tensor.cuda = lambda self, *a, **k: self

# The gallery's helper runs in BimanGrasp's Python too and imports nothing of ours: it
# turns a saved pose into HandModel's pose vector as the checkout's visualization.py does.
_HELPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "supervisor",
                       "gallery", "helper.py")
_spec = importlib.util.spec_from_file_location("gallery_helper", _HELPER)
helper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helper)


def hand_models():
    from utils.hand_model import HandModel
    try:
        from utils.config import HandSpec
    except ImportError:
        HandSpec = None
    models = {}
    for side in ("left", "right"):
        kwargs = dict(mjcf_path="mjcf/%s_shadow_hand.xml" % side, mesh_path="mjcf/meshes",
                      contact_points_path="mjcf/%s_hand_contact_points.json" % side,
                      penetration_points_path="mjcf/penetration_points.json",
                      device="cpu", handedness=side + "_hand")
        if HandSpec is not None:
            spec = HandSpec.preset_shadow(side)
            kwargs.update(mjcf_path=spec.model_path, mesh_path=spec.mesh_path,
                          contact_points_path=spec.contact_points_path,
                          penetration_points_path=spec.penetration_points_path)
        models[side] = HandModel(**kwargs)
    return models, "fork" if HandSpec is not None else "upstream"


def tip_sites(side):
    root = ET.parse("mjcf/%s_shadow_hand.xml" % side).getroot()
    sites = {}
    for body in root.iter("body"):
        for site in body.findall("site"):
            name = site.get("name", "")
            if name.startswith("robot0:S_") and name.endswith("tip"):
                sites[name] = (body.get("name"), [float(x) for x in site.get("pos").split()])
    return sites


def frames(model, qpos, sites):
    rot = helper.euler_sxyz(*[float(qpos[n]) for n in helper.ROTATION])
    pose = helper.pose_vector(qpos, model.chain.get_joint_parameter_names())
    model.set_parameters(torch.tensor([pose], dtype=torch.float64).float())
    R = torch.tensor(rot, dtype=torch.float64)
    t = torch.tensor(pose[:3], dtype=torch.float64)
    links, tips = {}, {}
    for name, transform in model.current_status.items():
        m = transform.get_matrix()[0].double()
        links[name] = (R @ m[:3, 3] + t).tolist() + (R @ m[:3, :3]).reshape(-1).tolist()
    for name, (body, pos) in sites.items():
        frame = model.current_status.get(body + "_child", model.current_status[body])
        m = frame.get_matrix()[0].double()
        local = m[:3, :3] @ torch.tensor(pos, dtype=torch.float64) + m[:3, 3]
        tips[name] = (R @ local + t).tolist()
    return {"links": links, "tips": tips}


def object_vertices(code, scale):
    from utils.object_model import ObjectModel
    model = ObjectModel(data_root_path="../data/meshdata", batch_size_each=1, num_samples=0,
                        device="cpu")
    model.initialize([code])
    return (model.object_mesh_list[0].vertices * scale).tolist()


def main():
    request = json.load(open(sys.argv[1]))
    models, variant = hand_models()
    sites = {side: tip_sites(side) for side in models}
    out = {"variant": variant, "grasps": [
        {side: frames(models[side], g["qpos_" + side], sites[side]) for side in models}
        for g in request["grasps"]]}
    if request.get("object"):
        out["object_vertices"] = object_vertices(request["object"], request["scale"])
    json.dump(out, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
