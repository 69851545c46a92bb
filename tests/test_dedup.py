"""Near-duplicate removal: tolerances per column group, wrap-around, earliest kept, order."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from supervisor.emulator.grasps import attractors as emu_attractors, make_grasps
from supervisor.config.toml import ConfigError
from supervisor.dataset import dedup
from supervisor.dataset.dedup import DedupIndex, dedup_mask, nearest_distances
from supervisor.config.schema import DedupSettings
from supervisor.dataset.results import QPOS_NAMES, to_columns

S = DedupSettings(enabled=True)
TOL = {"joint": S.joint_tol_rad, "rotation": S.rotation_tol_rad,
       "translation": S.translation_tol_m}
GROUP = {**{name: "joint" for name in QPOS_NAMES[:22]},
         "WRJRx": "rotation", "WRJRy": "rotation", "WRJRz": "rotation",
         "WRJTx": "translation", "WRJTy": "translation", "WRJTz": "translation"}


def grasps(left: np.ndarray, right: np.ndarray | None = None,
           scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
    left = np.atleast_2d(np.asarray(left, dtype=np.float64))
    right = left.copy() if right is None else np.atleast_2d(right)
    n = len(left)
    return {"qpos_left": left, "qpos_right": right,
            "scale": np.full(n, 0.1) if scale is None else np.asarray(scale, float)}


def base_pose(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, len(QPOS_NAMES))


def brute_force(columns: dict[str, np.ndarray], s: DedupSettings) -> np.ndarray:
    """The definition, row by row: kept unless within tolerance of an earlier kept row."""
    tol = dedup.column_tolerances(s)
    x = np.concatenate([columns["qpos_left"], columns["qpos_right"]], axis=1)
    tol2 = np.concatenate([tol, tol])
    angle = np.zeros(56, dtype=bool)
    angle[[22, 23, 24, 50, 51, 52]] = True
    kept: list[int] = []
    for j in range(len(x)):
        d = np.abs(x[kept] - x[j])
        d[:, angle] = np.abs((d[:, angle] + math.pi) % (2 * math.pi) - math.pi)
        same_scale = np.abs(columns["scale"][kept] - columns["scale"][j]) <= 1e-6
        if not ((d <= tol2).all(axis=1) & same_scale).any():
            kept.append(j)
    mask = np.zeros(len(x), dtype=bool)
    mask[kept] = True
    return mask


# -- settings ---------------------------------------------------------------------------

def test_defaults_are_off_and_documented_values() -> None:
    d = DedupSettings()
    assert (d.enabled, d.joint_tol_rad, d.rotation_tol_rad, d.translation_tol_m) == (
        False, 0.05, 0.05, 0.005)
    assert DedupSettings.from_table({}, "c.toml") == d
    assert DedupSettings.from_table({"enabled": True, "joint_tol_rad": 0.1,
                                     "translation_tol_m": 1}, "c.toml") == DedupSettings(
        True, 0.1, 0.05, 1.0)


@pytest.mark.parametrize("table,key,expected", [
    ({"enable": True}, "dedup.enable", "a known key"),
    ({"enabled": "yes"}, "dedup.enabled", "true or false"),
    ({"enabled": 1}, "dedup.enabled", "true or false"),
    ({"joint_tol_rad": -0.1}, "dedup.joint_tol_rad", "> 0"),
    ({"joint_tol_rad": 0}, "dedup.joint_tol_rad", "> 0"),
    ({"joint_tol_rad": "0.1"}, "dedup.joint_tol_rad", "a finite number"),
    ({"joint_tol_rad": True}, "dedup.joint_tol_rad", "a finite number"),
    ({"rotation_tol_rad": 4.0}, "dedup.rotation_tol_rad", "<= pi"),
    ({"rotation_tol_rad": float("nan")}, "dedup.rotation_tol_rad", "a finite number"),
    ({"translation_tol_m": float("inf")}, "dedup.translation_tol_m", "a finite number"),
    ({"translation_tol_m": -1e-9}, "dedup.translation_tol_m", "> 0"),
    ([1, 2], "dedup", "a table"),
])
def test_bad_tables_name_file_key_value(table: object, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        DedupSettings.from_table(table, "c.toml")
    assert err.value.key == key and expected in err.value.expected
    assert str(err.value).startswith(f"c.toml: {key} = ")


# -- the criterion, column by column ------------------------------------------------------

@pytest.mark.parametrize("hand", ["qpos_left", "qpos_right"])
@pytest.mark.parametrize("column", range(len(QPOS_NAMES)), ids=list(QPOS_NAMES))
@pytest.mark.parametrize("factor,duplicate", [(0.0, True), (0.99, True), (-0.99, True),
                                              (1.01, False), (-1.01, False), (3.0, False)])
def test_each_column_within_or_outside_its_tolerance(hand: str, column: int, factor: float,
                                                     duplicate: bool) -> None:
    a = base_pose()
    cols = grasps(np.stack([a, a]))
    cols[hand][1, column] += factor * TOL[GROUP[QPOS_NAMES[column]]]
    assert dedup_mask(cols, S).tolist() == [True, not duplicate]  # within a round
    index = DedupIndex(S)
    index.admit({k: v[:1] for k, v in cols.items()})
    assert index.admit({k: v[1:] for k, v in cols.items()}).tolist() == [not duplicate]


def test_every_column_at_once_just_within_is_a_duplicate() -> None:
    a = base_pose()
    tol = dedup.column_tolerances(S)
    b = a + 0.99 * tol * np.where(np.arange(28) % 2, 1, -1)
    assert dedup_mask(grasps(np.stack([a, b])), S).tolist() == [True, False]


def test_other_scale_is_another_grasp() -> None:
    a = base_pose()
    cols = grasps(np.stack([a, a, a]), scale=[0.1, 0.12, 0.1])
    assert dedup_mask(cols, S).tolist() == [True, True, False]


@pytest.mark.parametrize("first,second,duplicate", [
    (math.pi - 0.01, -math.pi + 0.01, True),      # across +pi/-pi
    (0.02, -0.02, True),
    (0.0, 2 * math.pi - 0.04, True),              # not wrapped by the writer
    (0.0, 4 * math.pi + 0.04, True),
    (3.0, 3.0 - 2 * math.pi, True),
    (0.0, 2 * math.pi - 0.06, False),
    (math.pi - 0.03, -math.pi + 0.03, False),     # 0.06 apart the short way
    (0.0, math.pi, False),
])
@pytest.mark.parametrize("column", [22, 23, 24])
def test_wrist_angles_wrap_around(first: float, second: float, duplicate: bool,
                                  column: int) -> None:
    a, b = base_pose(), base_pose()
    a[column], b[column] = first, second
    cols = grasps(np.stack([a, b]), right=np.stack([a, a]))
    assert dedup_mask(cols, S).tolist() == [True, not duplicate]
    assert brute_force(cols, S).tolist() == [True, not duplicate]


def test_translations_and_joints_do_not_wrap() -> None:
    a = base_pose()
    b = a.copy()
    b[0] += 2 * math.pi
    b[25] += 2 * math.pi / S.rotation_tol_rad * S.translation_tol_m
    assert dedup_mask(grasps(np.stack([a, b])), S).tolist() == [True, True]


# -- which grasp stays --------------------------------------------------------------------

def test_earliest_kept_within_a_round_and_chains_are_not_transitive() -> None:
    a = base_pose()
    step = np.zeros(28)
    step[3] = 0.6 * S.joint_tol_rad
    # b is near a; c is near b but not a: b goes (a is kept), so c stays.
    cols = grasps(np.stack([a, a + step, a + 2 * step, base_pose(1), a]))
    assert dedup_mask(cols, S).tolist() == [True, False, True, True, False]


def test_earliest_kept_across_rounds() -> None:
    a, b = base_pose(), base_pose(1)
    index = DedupIndex(S)
    assert index.admit(grasps(np.stack([a, b]))).tolist() == [True, True]
    near = a + 0.5 * dedup.column_tolerances(S)
    assert index.admit(grasps(np.stack([base_pose(2), near, a]))).tolist() == [True, False, False]
    assert len(index) == 3


def test_novel_does_not_add_and_add_takes_rows_as_they_are() -> None:
    a = base_pose()
    index = DedupIndex(S)
    assert index.novel(grasps(a)).tolist() == [True]
    assert len(index) == 0
    index.add(grasps(np.stack([a, a])))
    assert len(index) == 2 and index.novel(grasps(a)).tolist() == [False]


def test_empty_round_and_empty_index() -> None:
    index = DedupIndex(S)
    empty = grasps(np.zeros((0, 28)))
    assert index.admit(empty).shape == (0,)
    assert len(index) == 0 and index.tree_count == 0


# -- emulator rounds: removal, order, determinism, resume ---------------------------------

def emulator_round(seed: int, n: int, fraction: float = 0.25) -> dict[str, np.ndarray]:
    items = np.empty(n, dtype=object)
    items[:] = make_grasps("obj", seed, n, 10000, (fraction, 0.001))
    return to_columns(items, n)


@pytest.fixture(scope="module")
def rounds() -> list[dict[str, np.ndarray]]:
    return [emulator_round(seed, 64) for seed in range(8)]


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_emulator_near_duplicates_are_removed_exactly(rounds) -> None:
    every = concat(rounds)
    mask = DedupIndex(S).novel(every)
    assert mask.tolist() == brute_force(every, S).tolist()
    poses, _ = emu_attractors("obj")
    x = np.concatenate([every["qpos_left"], every["qpos_right"]], axis=1)
    attractors = np.concatenate([poses["left"], poses["right"]], axis=1)
    copy_of = np.full(len(x), -1)
    for k, attractor in enumerate(attractors):
        copy_of[np.abs(x - attractor).max(axis=1) <= 0.001] = k
    copies = copy_of >= 0
    assert copies.sum() == 8 * 16
    # Every original stays; of each attractor's copies, the first one only.
    assert mask[~copies].all()
    firsts = [int(np.flatnonzero(copy_of == k)[0]) for k in np.unique(copy_of[copies])]
    assert sorted(np.flatnonzero(mask & copies).tolist()) == sorted(firsts)


@pytest.mark.parametrize("chunks", [[1] * 8, [8], [3, 5], [2, 2, 2, 2], [1, 6, 1]])
def test_same_result_however_rounds_are_grouped(rounds, chunks: list[int]) -> None:
    """Rounds from 1 GPU or 10 reach the merger in round order: grouping cannot matter."""
    expected = DedupIndex(S).novel(concat(rounds))
    index, got, at = DedupIndex(S), [], 0
    for size in chunks:
        got.append(index.admit(concat(rounds[at:at + size])))
        at += size
    assert np.concatenate(got).tolist() == expected.tolist()
    assert len(index) == int(expected.sum())


def test_resume_from_kept_columns_equals_an_uninterrupted_run(rounds) -> None:
    whole = DedupIndex(S)
    masks = [whole.admit(r) for r in rounds]
    kept = concat([{k: v[m] for k, v in r.items()} for r, m in zip(rounds[:5], masks[:5])])
    resumed = DedupIndex.from_columns(S, kept)
    assert [resumed.admit(r).tolist() for r in rounds[5:]] == [m.tolist() for m in masks[5:]]


def test_trees_stay_logarithmic(rounds) -> None:
    index = DedupIndex(S)
    for r in rounds * 4:
        index.add(r)
        assert index.tree_count <= math.log2(len(index) / 64) + 1


def test_nearest_distances_are_in_tolerance_units() -> None:
    a = base_pose()
    b, c = a.copy(), a.copy()
    b[5] += 0.5 * S.joint_tol_rad
    c[27] += 20 * S.translation_tol_m
    d = nearest_distances(grasps(np.stack([a, b, c])), S, cap=8.0)
    assert d[:2] == pytest.approx([0.5, 0.5]) and d[2] == np.inf
    assert nearest_distances(grasps(np.stack([a, c])), S, cap=30.0) == pytest.approx([20, 20])
    assert nearest_distances(grasps(a), S).tolist() == [np.inf]


# -- hypothesis: any data, any split into rounds, matches the definition ------------------

@hsettings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), clusters=st.integers(1, 6),
       spread=st.floats(0.0, 2.5), cuts=st.lists(st.integers(1, 39), max_size=4),
       joint=st.sampled_from([0.02, 0.05, 0.3]), rot=st.sampled_from([0.01, 0.05, 1.0]))
def test_index_matches_the_definition(seed: int, n: int, clusters: int, spread: float,
                                      cuts: list[int], joint: float, rot: float) -> None:
    s = DedupSettings(True, joint, rot, 0.005)
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-math.pi, math.pi, (clusters, 2, 28))
    centres[:, :, 22:25] = rng.choice([-math.pi, math.pi, 0.0], (clusters, 2, 3))
    pick = rng.integers(0, clusters, n)
    noise = rng.uniform(-spread, spread, (n, 2, 28)) * dedup.column_tolerances(s)
    poses = centres[pick] + noise
    cols = grasps(poses[:, 0], poses[:, 1], scale=rng.choice([0.1, 0.1, 0.12], n))
    expected = brute_force(cols, s)
    index, got, bounds = DedupIndex(s), [], sorted({c for c in cuts if c < n} | {0, n})
    for lo, hi in zip(bounds, bounds[1:]):
        got.append(index.admit({k: v[lo:hi] for k, v in cols.items()}))
    assert np.concatenate(got).tolist() == expected.tolist()
    assert dedup_mask(cols, s).tolist() == expected.tolist()
