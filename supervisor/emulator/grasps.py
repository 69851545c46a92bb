"""The emulator's grasps: deterministic per (object, seed, batch, iterations), with
energies of a realistic spread, and optional near-duplicates (EMULATOR_NEAR_DUPLICATES)
copied from a few grasps fixed per object. See supervisor.emulator.program."""

from __future__ import annotations

import zlib

import numpy as np

from supervisor.dataset.results import QPOS_NAMES

ATTRACTOR_COUNT = 8
NEAR_DUPLICATE_NOISE = 0.001
SCALES = (0.06, 0.08, 0.1, 0.12, 0.15, 0.17)


def near_duplicates(spec: str) -> tuple[float, float] | None:
    """``EMULATOR_NEAR_DUPLICATES`` as (fraction, noise); None when unset."""
    if not spec:
        return None
    fraction_s, _, noise_s = spec.partition(":")
    try:
        fraction = float(fraction_s)
        noise = float(noise_s) if noise_s else NEAR_DUPLICATE_NOISE
    except ValueError:
        fraction = noise = float("nan")
    if not (0.0 <= fraction <= 1.0 and 0.0 <= noise < float("inf")):
        raise ValueError(f"EMULATOR_NEAR_DUPLICATES={spec!r}: expected FRACTION[:NOISE] "
                         "with 0 <= FRACTION <= 1 and NOISE >= 0")
    return fraction, noise


def attractors(code: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The ATTRACTOR_COUNT grasps (final poses per side, scales) every seed can copy."""
    rng = np.random.default_rng([zlib.crc32(code.encode()), 0xA77])
    shape = (ATTRACTOR_COUNT, len(QPOS_NAMES))
    poses = {side: rng.uniform(-0.5, 0.5, shape) for side in ("left", "right")}
    return poses, rng.choice(np.float32(SCALES), ATTRACTOR_COUNT).astype(np.float64)


def _copy_attractors(code: str, seed: int, final: dict[str, np.ndarray],
                     scale: np.ndarray, spec: tuple[float, float]) -> None:
    fraction, noise = spec
    n, k = final["left"].shape
    rng = np.random.default_rng([seed, zlib.crc32(code.encode()), n, 0xD0B])
    rows = np.sort(rng.choice(n, int(round(fraction * n)), replace=False))
    which = rng.integers(0, ATTRACTOR_COUNT, len(rows))
    poses, scales = attractors(code)
    for side in final:
        final[side][rows] = poses[side][which] + rng.uniform(-noise, noise, (len(rows), k))
    scale[rows] = scales[which]


def make_grasps(code: str, seed: int, batch_size: int, num_iterations: int,
                near_dup: tuple[float, float] | None = None, meta: bool = True) -> list[dict]:
    """Deterministic grasps with energies of a realistic spread (most pass filters).

    ``near_dup`` is ``EMULATOR_NEAR_DUPLICATES`` parsed; ``meta=False`` leaves out
    ``__meta__`` as upstream main.py does.
    """
    rng = np.random.default_rng([seed, zlib.crc32(code.encode()), batch_size, num_iterations])
    start, final, terms, scale = _draw(rng, batch_size, num_iterations)
    if near_dup is not None:
        _copy_attractors(code, seed, final, scale, near_dup)
    grasps = []
    for j in range(batch_size):
        grasps.append({
            "scale": float(scale[j]),
            "qpos_left": dict(zip(QPOS_NAMES, final["left"][j].tolist())),
            "qpos_left_st": dict(zip(QPOS_NAMES, start["left"][j].tolist())),
            "qpos_right": dict(zip(QPOS_NAMES, final["right"][j].tolist())),
            "qpos_right_st": dict(zip(QPOS_NAMES, start["right"][j].tolist())),
            **{key: float(values[j]) for key, values in terms.items()},
        })
        if meta:
            grasps[-1]["__meta__"] = {"object_code": code, "item_index": j}
    return grasps


def _draw(rng: np.random.Generator, n: int, num_iterations: int) -> tuple[
        dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Start and final poses per side, the energy terms (main.py's key order), scales."""
    k = len(QPOS_NAMES)
    settle = 1.0 - np.exp(-num_iterations / 2000.0)
    start = {side: rng.uniform(-0.5, 0.5, (n, k)) for side in ("left", "right")}
    final = {side: start[side] + settle * rng.normal(0, 0.1, (n, k)) for side in start}
    e_fc = rng.lognormal(np.log(0.35), 0.5, n)
    e_dis = rng.lognormal(np.log(0.01), 1.0, n)
    e_pen = rng.lognormal(np.log(0.0008), 1.0, n)
    e_spen = rng.lognormal(np.log(0.005), 1.0, n)
    e_joints = np.where(rng.random(n) < 0.9, 0.0, rng.uniform(0, 0.05, n))
    energy = e_fc + 100 * e_dis + 125 * e_pen + 10 * e_spen + e_joints
    terms = {"energy": energy, "E_fc": e_fc, "E_dis": e_dis, "E_pen": e_pen,
             "E_spen": e_spen, "E_joints": e_joints}
    return start, final, terms, rng.choice(np.float32(SCALES), n).astype(np.float64)


