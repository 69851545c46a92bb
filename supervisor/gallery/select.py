"""Which grasps of an object to draw, pure: ``show``'s choice (indices, the N best, or the
lowest-energy one) and the report's range: the lowest energy, a typical one (median
energy), then those most different in pose from every grasp already chosen (farthest
point in both wrists and both hands' joints, each column scaled by its spread)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


class SelectError(ValueError):
    pass


def pose_features(data: dict[str, np.ndarray]) -> np.ndarray:
    """Both hands' qpos side by side, each column over its spread (1 where it is flat)."""
    x = np.hstack([np.asarray(data["qpos_left"], np.float64),
                   np.asarray(data["qpos_right"], np.float64)])
    spread = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(spread > 1e-12, spread, 1.0)


def by_energy(energy: np.ndarray) -> np.ndarray:
    """Row order by energy, lowest first, ties by row (deterministic)."""
    return np.lexsort((np.arange(len(energy)), np.asarray(energy)))


def chosen(data: dict[str, np.ndarray], indices: Sequence[int] = (),
           best: int | None = None) -> list[int]:
    """``show``'s rows: the given indices, else the ``best`` lowest energies, else one."""
    n = len(data["energy"])
    if n == 0:
        raise SelectError("final.npz holds no grasps yet")
    if indices:
        wrong = [i for i in indices if not -n <= i < n]
        if wrong:
            raise SelectError(f"--index {wrong[0]} is outside 0..{n - 1} (or -{n}..-1 from "
                              f"the end; final.npz holds {n} grasps)")
        return list(dict.fromkeys(i % n for i in indices))
    return [int(i) for i in by_energy(data["energy"])[:max(1, best or 1)]]


def spread(data: dict[str, np.ndarray], count: int = 4) -> list[tuple[int, str]]:
    """The report's rows, each with why it was chosen."""
    n = len(data["energy"])
    if n == 0 or count <= 0:
        return []
    order = by_energy(data["energy"])
    picked = [(int(order[0]), "lowest energy")]
    median = int(order[(n - 1) // 2])
    if median != picked[0][0] and count > 1:
        picked.append((median, "median energy"))
    features = pose_features(data)
    far = np.full(n, np.inf)
    for i, _ in picked:
        far = np.minimum(far, np.linalg.norm(features - features[i], axis=1))
    while len(picked) < min(count, n):
        i = int(np.argmax(far))  # the first of equals: deterministic
        if far[i] <= 0:
            break
        picked.append((i, "most different pose"))
        far = np.minimum(far, np.linalg.norm(features - features[i], axis=1))
    return picked
