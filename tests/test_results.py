from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
from supervisor.emulator.grasps import make_grasps
from supervisor.dataset import results
from supervisor.dataset.results import QPOS_NAMES, ResultError

REAL = FIXTURES / "results"
CODE = "Curver_Storage_Bin_Black_Small"


@pytest.mark.parametrize("probe,n", [("probe1", 4), ("probe2", 8)])
def test_reads_real_main_py_output(probe: str, n: int) -> None:
    cols = results.read_round(REAL / probe / f"{CODE}.npy", expected_len=n)
    for key in results.QPOS_KEYS:
        assert cols[key].shape == (n, 28) and cols[key].dtype == np.float64
    for key in results.SCALAR_KEYS:
        assert cols[key].shape == (n,) and cols[key].dtype == np.float64
    raw = np.load(REAL / probe / f"{CODE}.npy", allow_pickle=True)
    assert cols["qpos_right"][1, 2] == raw[1]["qpos_right"][QPOS_NAMES[2]]
    assert cols["E_pen"][n - 1] == raw[n - 1]["E_pen"]


def test_real_output_wrong_length_is_rejected() -> None:
    with pytest.raises(ResultError, match="wrong batch length: 4 grasps, expected 8"):
        results.read_round(REAL / "probe1" / f"{CODE}.npy", expected_len=8)


def save(path: Path, payload: object) -> Path:
    if isinstance(payload, list):
        arr = np.empty(len(payload), dtype=object)
        arr[:] = payload
        payload = arr
    np.save(path, payload, allow_pickle=True)
    return path


def grasps(n: int = 4) -> list[dict]:
    return make_grasps("obj", 1, n, 10)


def test_unknown_numeric_keys_are_kept(tmp_path: Path) -> None:
    items = grasps()
    for g in items:
        g["E_vew"] = 0.5
        g["note"] = "text is ignored"
    cols = results.read_round(save(tmp_path / "r.npy", items), 4)
    assert np.all(cols["E_vew"] == 0.5) and "note" not in cols


GARBAGE = {
    "nan energy": lambda g: g[1].update(E_pen=float("nan")),
    "inf qpos": lambda g: g[0]["qpos_left"].update(WRJTx=float("inf")),
    "missing key": lambda g: g[2].pop("E_fc"),
    "extra key in one grasp": lambda g: g[3].update(E_new=1.0),
    "qpos names reordered": lambda g: g[0].update(
        qpos_left=dict(reversed(list(g[0]["qpos_left"].items())))),
    "string value": lambda g: g[0].update(energy="low"),
    "not a dict": lambda g: g.__setitem__(1, [1, 2, 3]),
}


@pytest.mark.parametrize("name", list(GARBAGE))
def test_garbage_results_are_rejected_with_a_reason(tmp_path: Path, name: str) -> None:
    items = grasps()
    GARBAGE[name](items)
    with pytest.raises(ResultError) as info:
        results.read_round(save(tmp_path / "r.npy", items), 4)
    assert str(info.value)


def test_truncated_wrong_type_and_dtype(tmp_path: Path) -> None:
    good = save(tmp_path / "good.npy", grasps())
    cut = tmp_path / "cut.npy"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ResultError, match="unreadable"):
        results.read_round(cut, 4)
    wrong_type = tmp_path / "dict.npy"
    np.save(wrong_type, {"grasps": grasps()}, allow_pickle=True)
    with pytest.raises(ResultError, match="holds a dict, not a list of dicts"):
        results.read_round(wrong_type, 4)
    with pytest.raises(ResultError, match="float32"):
        results.read_round(save(tmp_path / "f.npy", np.zeros((4, 2), np.float32)), 4)
    pickled = tmp_path / "pickle.npy"
    pickled.write_bytes(pickle.dumps(grasps()))
    with pytest.raises(ResultError):
        results.read_round(pickled, 4)
    with pytest.raises(ResultError, match="no result file"):
        results.read_round(tmp_path / "absent.npy", 4)


def test_filter_and_provenance() -> None:
    cols = results.to_columns(np.array(grasps(6) + [], dtype=object), 6)
    mask = results.accept_mask(cols, {"E_pen": float(np.median(cols["E_pen"]))})
    assert 0 < mask.sum() < 6
    kept = results.select(results.with_provenance(cols, 42, 3), mask)
    assert kept["seed"].tolist() == [42] * int(mask.sum())
    assert kept["item_index"].tolist() == np.flatnonzero(mask).tolist()
    assert kept["round_id"].dtype == np.int64
