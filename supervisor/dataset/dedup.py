"""Near-duplicate removal at merge (``[dedup]``): one object's grasps, greedy, deterministic.

Two grasps of the same object are near-duplicates when, for **both** hands (``qpos_left``
and ``qpos_right``, the final poses; the ``_st`` start poses are not compared):

- every finger joint, columns 0-21 (``robot0:FFJ3`` ... ``robot0:THJ0``), differs by at
  most ``joint_tol_rad``;
- every wrist Euler angle, columns 22-24 (``WRJRx WRJRy WRJRz``), differs by at most
  ``rotation_tol_rad``, the difference taken modulo 2*pi (``+3.13`` and ``-3.13`` are
  0.013 rad apart): main.py writes ``transforms3d``'s ``mat2euler(R, 'sxyz')``, whose x and
  z angles jump from +pi to -pi;
- every wrist translation, columns 25-27 (``WRJTx WRJTy WRJTz``), differs by at most
  ``translation_tol_m``;
- and the object scale is the same (to ``SCALE_TOL``): one hand pose on an object scaled
  0.06 and on one scaled 0.15 are two different grasps.

Each column is divided by its tolerance, so a near-duplicate is a pair at Chebyshev
distance <= 1 in these scaled coordinates, with the wrist angles on a circle (cKDTree's
periodic ``boxsize``; a zero entry leaves a dimension non-periodic, which scipy's own
tests pin down). Angles within ``rotation_tol_rad`` of one another per axis are at most
``3 * rotation_tol_rad`` apart as rotations. Comparing Euler angles misses a pair only
near gimbal lock (``|WRJRy|`` near pi/2), where close rotations can split x and z
differently: both grasps are then kept, never one lost.

Grasps are taken in (round_id, item_index) order and one is kept when it is not a
near-duplicate of any grasp kept before it, so the result does not depend on how grasps
are grouped into rounds or on how many GPUs ran them.

Defaults: 0.05 rad (2.9 degrees) for joints and wrist angles, 5 mm for the wrist. A 0.05
rad turn moves a point 0.1 m from its joint (a fingertip from the wrist or knuckle) by
5 mm, so each tolerance is about 5 mm of contact movement: roughly the width of a
fingertip's contact patch, and a few times the 1.5 mm penetration limit of the public
dataset. Grasps closer than that in all 56 values at once are one grasp found twice.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from supervisor.config.schema import DedupSettings
from supervisor.dataset.results import QPOS_NAMES

JOINT_COLUMNS = slice(0, 22)
ROTATION_COLUMNS = slice(22, 25)
TRANSLATION_COLUMNS = slice(25, 28)
HAND_KEYS = ("qpos_left", "qpos_right")
SCALE_TOL = 1e-6  # scales come from a handful of values; any real difference separates
# query() prunes with "distance < bound"; near-duplicates are "distance <= 1".
_BOUND = 1.0 + 1e-9

assert QPOS_NAMES[ROTATION_COLUMNS] == ("WRJRx", "WRJRy", "WRJRz")
assert QPOS_NAMES[TRANSLATION_COLUMNS] == ("WRJTx", "WRJTy", "WRJTz")

Columns = Mapping[str, np.ndarray]


def column_tolerances(settings: DedupSettings) -> np.ndarray:
    """The 28 per-column tolerances of one hand, in QPOS_NAMES order."""
    tol = np.empty(len(QPOS_NAMES))
    tol[JOINT_COLUMNS] = settings.joint_tol_rad
    tol[ROTATION_COLUMNS] = settings.rotation_tol_rad
    tol[TRANSLATION_COLUMNS] = settings.translation_tol_m
    return tol


def boxsize(settings: DedupSettings) -> np.ndarray:
    """cKDTree's period per scaled dimension: 2*pi/tol for wrist angles, 0 (none) else."""
    hand = np.zeros(len(QPOS_NAMES))
    hand[ROTATION_COLUMNS] = 2 * math.pi / settings.rotation_tol_rad
    return np.concatenate([hand, hand, [0.0]])


def scaled_points(columns: Columns, settings: DedupSettings) -> np.ndarray:
    """N x 57: both hands' 28 values over their tolerances (angles wrapped), then scale."""
    tol = column_tolerances(settings)
    hands = [np.asarray(columns[key], dtype=np.float64) / tol for key in HAND_KEYS]
    scale = np.asarray(columns["scale"], dtype=np.float64)[:, None] / SCALE_TOL
    points = np.concatenate([*hands, scale], axis=1)
    period = boxsize(settings)
    wrapped = period > 0
    angles = np.mod(points[:, wrapped], period[wrapped])
    angles[angles >= period[wrapped]] = 0.0  # -1e-17 mod L rounds to L itself
    points[:, wrapped] = angles
    return points


def _tree(points: np.ndarray, period: np.ndarray) -> Any:
    from scipy.spatial import cKDTree  # imported when needed: the config loads this module

    return cKDTree(points, leafsize=32, boxsize=period)


def _first_of_each_group(points: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Greedy within one batch: row j stays unless a kept row i < j is within 1."""
    keep = np.ones(len(points), dtype=bool)
    if len(points) < 2:
        return keep
    pairs = _tree(points, period).query_pairs(1.0, p=np.inf, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    pairs = np.sort(pairs, axis=1)
    pairs = pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]
    later, starts = np.unique(pairs[:, 1], return_index=True)
    ends = np.append(starts[1:], len(pairs))
    # Rows i < j are final when j's turn comes: pairs are sorted by j.
    for j, start, end in zip(later.tolist(), starts.tolist(), ends.tolist()):
        if keep[pairs[start:end, 0]].any():
            keep[j] = False
    return keep


class DedupIndex:
    """The kept grasps of one object; ``admit`` takes a round, in round_id order.

    Kept grasps sit in a few cKDTrees of decreasing size (the logarithmic method): adding
    a batch merges it with the trees no larger than it, so a grasp is re-indexed about
    log2(kept / batch) times in all and a query visits that many trees.
    """

    def __init__(self, settings: DedupSettings) -> None:
        self.settings = settings
        self._period = boxsize(settings)
        self._levels: list[tuple[np.ndarray, Any]] = []

    @classmethod
    def from_columns(cls, settings: DedupSettings, columns: Columns) -> DedupIndex:
        """An index of grasps already kept (a final.npz on resume), taken as they are."""
        index = cls(settings)
        index.add(columns)
        return index

    def __len__(self) -> int:
        return sum(len(points) for points, _ in self._levels)

    @property
    def tree_count(self) -> int:
        return len(self._levels)

    def novel(self, columns: Columns) -> np.ndarray:
        """Mask of the rows to keep; rows must be in (round_id, item_index) order."""
        points = scaled_points(columns, self.settings)
        fresh = np.ones(len(points), dtype=bool)
        for _, tree in self._levels:
            rows = np.flatnonzero(fresh)
            if len(rows) == 0:
                break
            dist, _ = tree.query(points[rows], k=1, p=np.inf, distance_upper_bound=_BOUND)
            fresh[rows[dist <= 1.0]] = False
        rows = np.flatnonzero(fresh)
        fresh[rows] = _first_of_each_group(points[rows], self._period)
        return fresh

    def add(self, columns: Columns) -> None:
        """Index these rows as kept, unchecked (they come from ``novel`` or a dataset)."""
        points = scaled_points(columns, self.settings)
        if len(points) == 0:
            return
        while self._levels and len(self._levels[-1][0]) <= len(points):
            points = np.concatenate([self._levels.pop()[0], points])
        self._levels.append((points, _tree(points, self._period)))

    def admit(self, columns: Columns) -> np.ndarray:
        """``novel`` then ``add`` the rows it keeps; returns the mask."""
        mask = self.novel(columns)
        self.add({key: np.asarray(columns[key])[mask] for key in (*HAND_KEYS, "scale")})
        return mask


def dedup_mask(columns: Columns, settings: DedupSettings) -> np.ndarray:
    """Rows of a whole dataset that dedup keeps (rows in (round_id, item_index) order)."""
    return DedupIndex(settings).novel(columns)


def nearest_distances(columns: Columns, settings: DedupSettings,
                      cap: float = 8.0) -> np.ndarray:
    """Each grasp's distance to its nearest other grasp, in scaled Chebyshev units.

    1.0 is exactly at the dedup tolerance; values beyond ``cap`` are ``inf`` (an uncapped
    search in 57 dimensions degenerates to comparing every pair).
    """
    points = scaled_points(columns, settings)
    if len(points) < 2:
        return np.full(len(points), np.inf)
    tree = _tree(points, boxsize(settings))
    dist, _ = tree.query(points, k=2, p=np.inf, distance_upper_bound=cap * _BOUND)
    out = dist[:, 1]
    out[out > cap] = np.inf
    return out
