"""A grasp's small picture for the report, drawn here with numpy (no browser, no GPU):
the triangles seen from one fixed direction, each sampled into a depth buffer and shaded
by how squarely it faces the viewer, written as a palette PNG of a few kilobytes. Each
hand has its colour (``KEY`` says which), in the 3D views too.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

WIDTH, HEIGHT = 200, 150
VERSION = 2  # in the cached pictures' names: raise it when what a picture shows changes
BACKGROUND = (226, 240, 217)  # visualization.py's paper colour
# The left hand as visualization.py draws both (lightslategray), the right one orange (a
# pair told apart with any colour vision); the object seashell-ish; a wrist's axes.
COLOURS = {"left hand": (119, 136, 153), "right hand": (214, 128, 48),
           "object": (238, 214, 196), "x": (214, 39, 40), "y": (44, 160, 44),
           "z": (31, 119, 180)}
SIDE_COLOUR_NAMES = {"left hand": "grey-blue", "right hand": "orange"}
KEY = ", ".join(f"{side} {colour}" for side, colour in SIDE_COLOUR_NAMES.items())
SHADES = 12
MAX_SAMPLES = 1_500_000


def view_rotation(azimuth_deg: float = 35.0, elevation_deg: float = 25.0) -> np.ndarray:
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(e), -np.sin(e)], [0, np.sin(e), np.cos(e)]])
    # world z up -> screen y up, looking along the view's -z after the turn
    to_screen = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    return rx @ to_screen @ rz


def render(parts: list[tuple[np.ndarray, np.ndarray, str]], width: int = WIDTH,
           height: int = HEIGHT) -> bytes:
    """``parts``: (vertices, faces, colour name). A PNG of them, framed to fit."""
    palette = [BACKGROUND]
    names = list(COLOURS)
    for name in names:
        base = np.array(COLOURS[name], np.float64)
        palette += [tuple(int(c) for c in base * (0.35 + 0.65 * s / (SHADES - 1)))
                    for s in range(SHADES)]
    r = view_rotation()
    tris, mats = [], []
    for v, f, colour in parts:
        if len(v) and len(f):
            tris.append((np.asarray(v, np.float64) @ r.T)[np.asarray(f)])
            mats.append(np.full(len(f), names.index(colour), np.int64))
    image = np.zeros((height, width), np.uint8)
    if tris:
        _rasterise(np.concatenate(tris), np.concatenate(mats), image)
    return _png(image, palette)


def _rasterise(t: np.ndarray, material: np.ndarray, image: np.ndarray) -> None:
    height, width = image.shape
    lo, hi = t.reshape(-1, 3).min(axis=0), t.reshape(-1, 3).max(axis=0)
    scale = 0.92 * min(width / max(hi[0] - lo[0], 1e-9), height / max(hi[1] - lo[1], 1e-9))
    centre = (lo + hi) / 2
    xy = (t[:, :, :2] - centre[:2]) * scale + [width / 2, height / 2]
    normal = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    length = np.linalg.norm(normal, axis=1)
    facing = np.abs(normal[:, 2]) / np.where(length > 0, length, 1)
    shade = np.clip((facing * (SHADES - 1)).round(), 0, SHADES - 1).astype(np.int64)
    e1, e2 = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]
    area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    count = np.clip(np.ceil(area * 4).astype(np.int64) + 3, 4, 800)
    if count.sum() > MAX_SAMPLES:
        count = np.maximum(1, (count * MAX_SAMPLES / count.sum()).astype(np.int64))
    which = np.repeat(np.arange(len(t)), count)
    rng = np.random.default_rng(0)
    a, b = rng.random(len(which)), rng.random(len(which))
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    w = np.stack([1 - a - b, a, b], axis=1)[:, :, None]
    p = (xy[which] * w).sum(axis=1)
    depth = (t[which, :, 2] * w[:, :, 0]).sum(axis=1)
    px, py = p[:, 0].astype(np.int64), (height - 1 - p[:, 1]).astype(np.int64)
    ok = (px >= 0) & (px < width) & (py >= 0) & (py < height)
    pixel, depth, which = (py * width + px)[ok], depth[ok], which[ok]
    order = np.lexsort((-depth, pixel))  # nearest (largest z, towards the viewer) first
    pixel, which = pixel[order], which[order]
    first = np.ones(len(pixel), bool)
    first[1:] = pixel[1:] != pixel[:-1]
    flat = image.reshape(-1)
    flat[pixel[first]] = (1 + material[which[first]] * SHADES + shade[which[first]]).astype(
        np.uint8)


def _png(image: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    height, width = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    plte = b"".join(bytes(c) for c in palette)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8,
                                                             3, 0, 0, 0))
            + chunk(b"PLTE", plte) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def hex_colour(name: str) -> str:
    return "#%02x%02x%02x" % COLOURS[name]


def cube(centre: np.ndarray, half: float) -> tuple[np.ndarray, np.ndarray]:
    """A small cube around ``centre``: a wrist's mark, in its hand's colour."""
    v = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return centre + half * v, f


def stick(start: np.ndarray, end: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """A thin triangular prism from ``start`` to ``end``: an axis drawn as triangles."""
    d = end - start
    n = d / (np.linalg.norm(d) or 1.0)
    a = np.cross(n, [0, 0, 1] if abs(n[2]) < 0.9 else [1, 0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    ring = [radius * (np.cos(k) * a + np.sin(k) * b) for k in (0, 2.1, 4.2)]
    v = np.array([start + o for o in ring] + [end + o for o in ring])
    f = np.array([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4], [2, 0, 3], [2, 3, 5],
                  [0, 2, 1], [3, 4, 5]])
    return v, f
