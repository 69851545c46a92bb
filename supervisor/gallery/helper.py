"""The gallery's helper: a child in BimanGrasp's own Python, in its ``BimanGrasp-Optimization``
folder, that draws grasps with the checkout's ``HandModel`` and ``ObjectModel`` as the
checkout's ``visualization.py`` does, and hands back the meshes as arrays.

    python /path/to/supervisor/gallery/helper.py OUT_DIR

It imports nothing of the supervisor (that package is not installed in BimanGrasp's
environment): only the checkout, torch, numpy and what they import. One request per line
on stdin, one answer per request on stdout, a line starting with ``@gallery `` followed by
JSON (anything else on stdout is the checkout's own printing, ignored by the reader):

- ``{"op": "hands"}``: load both hands (once); the answer names the variant (``fork``:
  ``utils.config.HandSpec`` presets; ``upstream``: the public release's fixed paths and
  joint order) and the file of the reference pose (all zeros) with each link's faces;
- ``{"op": "grasp", "id": ID, "qpos_left": {...}, "qpos_right": {...}}``: each link's
  vertices of both hands in that pose, written to ``OUT_DIR/ID.npz``;
- ``{"op": "object", "code": CODE}``: the object's mesh at scale 1 (the object is drawn
  at each grasp's ``scale``: ``ObjectModel`` multiplies its vertices by it).

Errors are answers too: ``{"ok": false, "error": ..., "fix": ...}``. Runs on the CPU: the
supervisor hides CUDA from it, and where the checkout calls ``.cuda()`` (the public
release's hand model does) without a CUDA device, the call leaves the tensor where it is.
"""

import os
import sys

if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]  # this folder's modules (select, page, ...) must not shadow the stdlib's

import json  # noqa: E402
import math  # noqa: E402
import traceback  # noqa: E402

TRANSLATION = ("WRJTx", "WRJTy", "WRJTz")
ROTATION = ("WRJRx", "WRJRy", "WRJRz")
UPSTREAM_JOINTS = (  # the public release's visualization.py orders the joints so
    "robot0:FFJ3", "robot0:FFJ2", "robot0:FFJ1", "robot0:FFJ0",
    "robot0:MFJ3", "robot0:MFJ2", "robot0:MFJ1", "robot0:MFJ0",
    "robot0:RFJ3", "robot0:RFJ2", "robot0:RFJ1", "robot0:RFJ0",
    "robot0:LFJ4", "robot0:LFJ3", "robot0:LFJ2", "robot0:LFJ1", "robot0:LFJ0",
    "robot0:THJ4", "robot0:THJ3", "robot0:THJ2", "robot0:THJ1", "robot0:THJ0",
)
OUT = sys.stdout


def answer(**fields):
    OUT.write("@gallery " + json.dumps(fields) + "\n")
    OUT.flush()


def euler_sxyz(ax, ay, az):
    """transforms3d.euler.euler2mat(ax, ay, az) (static x, then y, then z) as rows."""
    ca, sa, cb, sb, cc, sc = (math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay),
                              math.cos(az), math.sin(az))
    return [[cb * cc, sa * sb * cc - ca * sc, ca * sb * cc + sa * sc],
            [cb * sc, sa * sb * sc + ca * cc, ca * sb * sc - sa * cc],
            [-sb, sa * cb, ca * cb]]


def pose_vector(qpos, joint_names):
    """visualization.py's pose: translation, the rotation's first two columns, joints."""
    rot = euler_sxyz(*[float(qpos.get(n, 0.0)) for n in ROTATION])
    six = [rot[r][c] for c in range(2) for r in range(3)]
    return ([float(qpos.get(n, 0.0)) for n in TRANSLATION] + six
            + [float(qpos.get(n, 0.0)) for n in joint_names])


class Checkout:
    def __init__(self):
        sys.path.insert(0, os.getcwd())
        sys.path.append(os.path.dirname(os.getcwd()))  # as visualization.py does
        import torch

        self.torch = torch
        if not torch.cuda.is_available():  # the public release calls .cuda() in places
            torch.Tensor.cuda = lambda self, *a, **k: self
            torch.nn.Module.cuda = lambda self, *a, **k: self
        self.hands = None
        self.objects = {}

    def load_hands(self):
        from utils.hand_model import HandModel

        try:
            from utils.config import HandSpec
        except ImportError:
            HandSpec = None
        self.variant = "fork" if HandSpec is not None else "upstream"
        self.hands = {}
        for side in ("left", "right"):
            if HandSpec is not None:
                spec = HandSpec.preset_shadow(side)
                mjcf = spec.model_path if spec.model_format == "mjcf" else None
                urdf = spec.model_path if spec.model_format == "urdf" else None
                model = HandModel(mjcf_path=mjcf, urdf_path=urdf, mesh_path=spec.mesh_path,
                                  contact_points_path=spec.contact_points_path,
                                  penetration_points_path=spec.penetration_points_path,
                                  device="cpu", handedness=side + "_hand",
                                  exclude_links_for_sdf=getattr(
                                      spec, "exclude_links_for_sdf", None))
                joints = list(getattr(model, "joints_names", []))
            else:
                model = HandModel(mjcf_path="mjcf/%s_shadow_hand.xml" % side,
                                  mesh_path="mjcf/meshes",
                                  contact_points_path="mjcf/%s_hand_contact_points.json" % side,
                                  penetration_points_path="mjcf/penetration_points.json",
                                  device="cpu", handedness=side + "_hand")
                joints = list(UPSTREAM_JOINTS)
            self.hands[side] = (model, joints)

    def draw_hand(self, side, qpos):
        model, joints = self.hands[side]
        pose = self.torch.tensor(pose_vector(qpos, joints), dtype=self.torch.float,
                                 device="cpu")
        model.set_parameters(pose.unsqueeze(0))
        return model.get_plotly_data(i=0, opacity=1, color="lightslategray",
                                     with_contact_points=False)

    def object_mesh(self, code):
        from utils.object_model import ObjectModel

        model = ObjectModel(data_root_path="../data/meshdata", batch_size_each=1,
                            num_samples=2000, device="cpu", size="large")
        model.initialize(code)
        model.object_scale_tensor = self.torch.tensor(1.0, dtype=self.torch.float,
                                                      device="cpu").reshape(1, 1)
        return model.get_plotly_data(i=0, color="seashell", opacity=1)


def arrays(traces, with_faces):
    import numpy as np

    out = {}
    for n, t in enumerate(traces):
        out["v%d" % n] = np.stack([np.asarray(t.x, dtype=np.float64),
                                   np.asarray(t.y, dtype=np.float64),
                                   np.asarray(t.z, dtype=np.float64)], axis=1)
        if with_faces:
            out["f%d" % n] = np.stack([np.asarray(t.i), np.asarray(t.j),
                                       np.asarray(t.k)], axis=1).astype(np.int64)
    return out


def handle(checkout, request, out_dir):
    import numpy as np

    op = request.get("op")
    if op == "hands":
        if checkout.hands is None:
            checkout.load_hands()
        zeros = {}
        path = os.path.join(out_dir, "reference.npz")
        found = {}
        for side in ("left", "right"):
            for k, v in arrays(checkout.draw_hand(side, zeros), True).items():
                found[side + "_" + k] = v
        np.savez(path, **found)
        return {"variant": checkout.variant, "path": path,
                "joints": {s: checkout.hands[s][1] for s in checkout.hands}}
    if op == "grasp":
        found = {}
        for side in ("left", "right"):
            for k, v in arrays(checkout.draw_hand(side, request["qpos_" + side]),
                               False).items():
                found[side + "_" + k] = v
        path = os.path.join(out_dir, "%s.npz" % request["id"])
        np.savez(path, **found)
        return {"path": path}
    if op == "object":
        path = os.path.join(out_dir, "object.npz")
        np.savez(path, **arrays(checkout.object_mesh(request["code"]), True))
        return {"path": path}
    raise ValueError("unknown request %r" % (op,))


def main():
    global OUT
    out_dir = sys.argv[1]
    OUT = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the checkout's own prints go to stderr, never into the answers
    if not os.path.isfile(os.path.join("utils", "hand_model.py")):
        answer(ok=False, error="no BimanGrasp checkout in %s (utils/hand_model.py is "
                               "missing)" % os.getcwd(),
               fix="set [view] cwd (or [main] cwd) to the checkout's BimanGrasp-Optimization")
        return 1
    try:
        checkout = Checkout()
    except Exception as exc:
        answer(ok=False, error="cannot import torch: %s" % exc,
               fix="run the helper in BimanGrasp's Python: [view] command")
        return 1
    answer(ok=True, ready=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            answer(ok=True, **handle(checkout, request, out_dir))
        except ImportError as exc:
            answer(ok=False, error="the checkout's model does not import: %s" % exc,
                   fix="[view] cwd must be BimanGrasp-Optimization of a checkout whose "
                       "environment has its requirements ([view] command)")
        except Exception as exc:
            tb = traceback.format_exc().strip().splitlines()
            answer(ok=False, error="%s: %s" % (type(exc).__name__, exc), where=tb[-3:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
