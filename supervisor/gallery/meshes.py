"""Meshes as the gallery keeps them: both hands of a checkout as one reference pose (each
link's vertices and faces, drawn by the checkout at all-zero joints), each grasp as one
rigid motion per link from that pose (12 numbers a link: what a page needs to draw it,
instead of every vertex again), and the object at scale 1, decimated for a screen.

A link moves rigidly between poses, so its motion is found from the two sets of vertices
(Kabsch); ``motions`` checks the fit and refuses a hand model whose links deform.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

SIDES = ("left", "right")
RIGID_TOLERANCE_M = 1e-5  # 10 µm: float32 rounding of a pose, far below what a screen shows


class MeshError(ValueError):
    pass


@dataclass(frozen=True)
class Hands:
    """Each side's links at the reference pose: vertices (n, 3) float64, faces (m, 3)."""
    vertices: dict[str, list[np.ndarray]]
    faces: dict[str, list[np.ndarray]]

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Hands:
        vertices: dict[str, list[np.ndarray]] = {}
        faces: dict[str, list[np.ndarray]] = {}
        for side in SIDES:
            n = sum(1 for k in arrays if k.startswith(f"{side}_v"))
            if n == 0:
                raise MeshError(f"the helper drew no links of the {side} hand")
            vertices[side] = [np.asarray(arrays[f"{side}_v{i}"], np.float64) for i in range(n)]
            faces[side] = [np.asarray(arrays[f"{side}_f{i}"], np.int64) for i in range(n)]
        return cls(vertices, faces)

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for side in SIDES:
            for i, (v, f) in enumerate(zip(self.vertices[side], self.faces[side])):
                out[f"{side}_v{i}"], out[f"{side}_f{i}"] = v, f
        return out

    def fingerprint(self) -> str:
        """Names this hand model: cached motions are valid only against it."""
        h = hashlib.sha256()
        for side in SIDES:
            for v, f in zip(self.vertices[side], self.faces[side]):
                h.update(np.round(v, 6).tobytes())
                h.update(f.astype(np.int64).tobytes())
        return h.hexdigest()[:16]

    def merged(self, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One mesh per hand: vertices, faces (offset), each vertex's link index."""
        vs, fs, links, offset = [], [], [], 0
        for i, (v, f) in enumerate(zip(self.vertices[side], self.faces[side])):
            vs.append(v)
            fs.append(f + offset)
            links.append(np.full(len(v), i, np.int32))
            offset += len(v)
        return np.concatenate(vs), np.concatenate(fs), np.concatenate(links)


def rigid(reference: np.ndarray, moved: np.ndarray) -> tuple[np.ndarray, float]:
    """The rotation and translation taking ``reference`` onto ``moved`` (3x4), and the
    largest distance left between them after it."""
    a, b = reference.mean(axis=0), moved.mean(axis=0)
    u, _, vt = np.linalg.svd((reference - a).T @ (moved - b))
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    t = b - r @ a
    left = np.abs(reference @ r.T + t - moved).max() if len(reference) else 0.0
    return np.hstack([r, t[:, None]]), float(left)


def motions(hands: Hands, drawn: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A grasp as each hand's (links, 3, 4) float32: each link's motion from the
    reference pose."""
    out = {}
    for side in SIDES:
        found = []
        for i, v in enumerate(hands.vertices[side]):
            moved = np.asarray(drawn.get(f"{side}_v{i}", np.empty((0, 3))), np.float64)
            if moved.shape != v.shape:
                raise MeshError(f"{side} hand link {i}: {moved.shape[0]} vertices, the "
                                f"reference pose has {v.shape[0]}")
            m, left = rigid(v, moved)
            if left > RIGID_TOLERANCE_M:
                raise MeshError(f"{side} hand link {i} is not rigid between poses "
                                f"({left * 1000:.3f} mm off)")
            found.append(m)
        out[side] = np.array(found, np.float32)
    return out


def posed(hands: Hands, side: str, motion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One hand's merged mesh in a grasp's pose: vertices, faces."""
    v, f, links = hands.merged(side)
    m = np.asarray(motion, np.float64)[links]  # (n, 3, 4)
    return np.einsum("nij,nj->ni", m[:, :, :3], v) + m[:, :, 3], f


def decimate(vertices: np.ndarray, faces: np.ndarray,
             max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering on a grid coarse enough for ``max_faces``; small meshes as is."""
    vertices, faces = np.asarray(vertices, np.float64), np.asarray(faces, np.int64)
    if len(faces) <= max_faces:
        return vertices, faces
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    cells = max(8, int(np.sqrt(max_faces / 2)))
    while True:
        step = float((hi - lo).max()) / cells or 1.0
        keys = np.floor((vertices - lo) / step).astype(np.int64)
        _, cluster, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        cluster = cluster.reshape(-1)
        f = cluster[faces]
        f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])]
        _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
        f = f[np.sort(first)]
        if len(f) <= max_faces or cells <= 4:
            break
        cells = max(4, int(cells * 0.8))
    sums = np.zeros((counts.size, 3))
    np.add.at(sums, cluster, vertices)
    return sums / counts[:, None], f


def wrist(qpos: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A hand's wrist from its qpos row: position (3,) and rotation (3, 3), as BimanGrasp
    reads them (WRJT*, and WRJR* as static x-y-z Euler angles)."""
    at = {n: float(v) for n, v in zip(names, qpos)}
    ax, ay, az = (at.get(f"WRJR{c}", 0.0) for c in "xyz")
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return np.array([at.get(f"WRJT{c}", 0.0) for c in "xyz"]), rz @ ry @ rx


AXIS_M = 0.05  # a wrist's axes, 5 cm


def wrist_axes(data: dict[str, np.ndarray], row: int) -> list[tuple[str, str, np.ndarray,
                                                                      np.ndarray]]:
    """Without a hand model: each hand's wrist as its three axes, (side, "x"|"y"|"z",
    start, end), from the grasp's qpos: what the data alone says of the hands."""
    names = [str(n) for n in data["qpos_names"]]
    out = []
    for side in SIDES:
        at, rot = wrist(data[f"qpos_{side}"][row], names)
        out += [(side, "xyz"[a], at, at + AXIS_M * rot[:, a]) for a in range(3)]
    return out
