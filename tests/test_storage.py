"""Atomic writes, the dataset file, the manifest file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from supervisor import dataset, fsutil, manifest as mf
from supervisor.dataset import Accumulator
from supervisor.emulator import make_grasps
from supervisor.results import to_columns, with_provenance


def columns(seed: int, rid: int, n: int = 4) -> dict:
    items = np.empty(n, dtype=object)
    items[:] = make_grasps("o", seed, n, 10)
    return with_provenance(to_columns(items, n), seed, rid)


def test_failed_replace_leaves_the_old_file_intact(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "manifest.json"
    fsutil.atomic_write_bytes(path, b"old")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        fsutil.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temp left


def test_failed_write_leaves_the_old_dataset_intact(tmp_path: Path) -> None:
    path = tmp_path / "final.npz"
    dataset.write(path, columns(1, 0))

    class Full(Exception):
        pass

    def explode(f):
        f.write(b"partial")
        raise Full

    with pytest.raises(Full):
        fsutil.atomic_write(path, explode)
    assert len(dataset.load(path)["energy"]) == 4


def test_accumulator_orders_and_truncates() -> None:
    acc = Accumulator()
    acc.add(2, columns(2, 2))
    acc.add(0, columns(0, 0))
    built = acc.build()
    assert built["round_id"].tolist() == [0] * 4 + [2] * 4
    cut = acc.build({0: 4, 2: 1})
    assert cut["round_id"].tolist() == [0, 0, 0, 0, 2]
    again = Accumulator.from_columns(built)
    assert sorted(again.rounds) == [0, 2]
    np.testing.assert_array_equal(again.build()["qpos_left"], built["qpos_left"])


def test_dataset_load_rejects_nonsense(tmp_path: Path) -> None:
    path = tmp_path / "final.npz"
    dataset.write(path, columns(1, 0))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(dataset.DatasetError, match="unreadable"):
        dataset.load(path)
    cols = columns(1, 0)
    cols["round_id"] = cols["round_id"][::-1].copy() + np.arange(4)[::-1]
    dataset.write(path, cols)
    with pytest.raises(dataset.DatasetError, match="ordered"):
        dataset.load(path)
    np.savez(path, energy=np.zeros(3))
    with pytest.raises(dataset.DatasetError, match="missing"):
        dataset.load(path)


def test_manifest_round_trip_and_nonsense(tmp_path: Path) -> None:
    m = mf.Manifest("e", {"seed_base": 0}, {})
    m.objects["o"] = mf.ObjectRecord("o", 0, 10)
    m.objects["o"].rounds[0] = mf.RoundRecord(0, "e__o__r0", 0, status=mf.MERGED, accepted=4)
    path = tmp_path / "manifest.json"
    mf.save(path, m.dumps())
    again = mf.load(path)
    assert again.objects["o"].rounds[0].accepted == 4
    assert again.to_json()["objects"] == m.to_json()["objects"]
    path.write_text(path.read_text()[:50])
    with pytest.raises(mf.ManifestError, match="unreadable"):
        mf.load(path)
    path.write_text(json.dumps({"version": 1, "objects": {"o": {"index": "x"}}}))
    with pytest.raises(mf.ManifestError, match="unexpected content"):
        mf.load(path)


def test_cached_manifest_encoding_matches_a_full_encoding() -> None:
    m = mf.Manifest("e", {"seed_base": 0}, {"x": 1})
    for code in ("a", "b"):
        m.objects[code] = mf.ObjectRecord(code, len(m.objects), 10)
        m.objects[code].rounds[0] = mf.RoundRecord(0, f"e__{code}__r0", 0)
    first = json.loads(m.dumps())
    assert first == m.to_json()
    m.objects["a"].rounds[0].status = mf.MERGED
    m.touch("a")
    m.objects["c"] = mf.ObjectRecord("c", 2, 10)
    m.runs.append({"pid": 1})
    assert json.loads(m.dumps()) == m.to_json()
