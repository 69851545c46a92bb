"""The object as BimanGrasp sees it: ``data/meshdata/<code>/coacd/decomposed.obj`` next to
the checkout (``<checkout>/../data/meshdata``), the CoACD convex decomposition, one
``o`` block per convex part. Each part becomes one convex geom; MuJoCo takes the convex
hull of its vertices, so only the vertices are read. main.py multiplies the vertices by
each grasp's ``scale``; the scene does the same.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MESH_FILE = "coacd/decomposed.obj"
MIN_VERTICES = 4  # a convex part needs a volume


class ObjectError(ValueError):
    """An object whose decomposition is missing or unusable."""


def mesh_path(checkout: Path, code: str) -> Path:
    return Path(checkout).parent / "data" / "meshdata" / code / MESH_FILE


def _parts(lines: list[str], path: Path) -> list[np.ndarray]:
    parts: list[list[list[float]]] = []
    for n, line in enumerate(lines, 1):
        if line.startswith("o ") or (line.startswith("v ") and not parts):
            parts.append([])
        if line.startswith("v "):
            try:
                parts[-1].append([float(x) for x in line.split()[1:4]])
            except ValueError:
                raise ObjectError(f"{path}:{n}: a vertex that is not three numbers") from None
    arrays = [np.array(p, np.float64).reshape(-1, 3) for p in parts if p]
    if not arrays:
        raise ObjectError(f"{path}: no vertices")
    if any(len(a) < MIN_VERTICES or not np.isfinite(a).all() for a in arrays):
        raise ObjectError(f"{path}: a convex part with fewer than {MIN_VERTICES} vertices "
                          "or a non-finite one")
    return arrays


def read_parts(checkout: Path, code: str) -> list[np.ndarray]:
    """Each convex part's vertices at scale 1; raises ObjectError."""
    path = mesh_path(checkout, code)
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        raise ObjectError(f"{path}: no such file (object {code}'s convex decomposition)") \
            from None
    except OSError as exc:
        raise ObjectError(f"{path}: unreadable ({exc})") from None
    return _parts(lines, path)
