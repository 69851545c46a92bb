"""Atomic writes, the dataset file, the manifest file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from supervisor.dataset import final as dataset
from supervisor.storage import fsutil, manifest as mf
from supervisor.dataset.final import Accumulator
from supervisor.emulator.grasps import make_grasps
from supervisor.dataset.results import to_columns, with_provenance


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


def _state():
    from supervisor.core.records import ObjectRecord, RoundRecord, RoundStatus
    from supervisor.core.state import Policy, State

    state = State(Policy("e"), {"seed_base": 0}, {"x": 1}, 1.0)
    for code in ("a", "b"):
        state.add_object(ObjectRecord(code, len(state.objects), 10))
        state.add_round(code, RoundRecord(0, f"e__{code}__r0", 0, status=RoundStatus.MERGED,
                                          accepted=4))
    state.set_order(["a", "b"])
    return state


def test_manifest_round_trip_and_nonsense(tmp_path: Path) -> None:
    from supervisor.core.state import Policy

    state = _state()
    path = tmp_path / "manifest.json"
    mf.save(path, mf.Encoder().dumps(state))
    again = mf.load(path, Policy("e"))
    assert again.objects["a"].rounds[0].accepted == 4
    assert mf.to_json(again)["objects"] == mf.to_json(state)["objects"]
    path.write_text(path.read_text()[:50])
    with pytest.raises(mf.ManifestError, match="unreadable"):
        mf.load(path, Policy("e"))
    path.write_text(json.dumps({"version": 1, "objects": {"o": {"index": "x"}}}))
    with pytest.raises(mf.ManifestError, match="unexpected content"):
        mf.load(path, Policy("e"))


def test_cached_manifest_encoding_matches_a_full_encoding() -> None:
    from supervisor.core import events as ev
    from supervisor.core.records import ObjectRecord
    from supervisor.core.transitions import apply

    state, encoder = _state(), mf.Encoder()

    def same(a: dict, b: dict) -> bool:  # updated_at is the time of each encoding
        return {**a, "updated_at": 0} == {**b, "updated_at": 0}

    first = json.loads(encoder.dumps(state))
    assert same(first, mf.to_json(state))
    apply(state, ev.RoundStarted("a", 1, 0, 2.0))  # marks "a" changed, nothing else
    state.add_object(ObjectRecord("c", 2, 10))
    again = json.loads(encoder.dumps(state))
    assert same(again, mf.to_json(state)) and again["objects"]["a"]["rounds"]["1"]["gpu"] == 0


def test_journal_torn_last_line_is_ignored_and_bad_middle_line_is_an_error(
        tmp_path: Path) -> None:
    from supervisor.core import events as ev
    from supervisor.storage import journal

    path = tmp_path / "journal.jsonl"
    j = journal.Journal(path)
    j.append([ev.encode(1, ev.GpuLost(0, "x")), ev.encode(2, ev.GpuLost(1, "y"))])
    j.close()
    full = path.read_bytes()
    path.write_bytes(full[:-7])  # a kill cut the last line
    assert [seq for seq, _ in journal.read(path, 0)] == [1]
    assert [seq for seq, _ in journal.read(path, 1)] == []
    path.write_bytes(b"garbage\n" + full)
    with pytest.raises(journal.JournalError, match="line 1"):
        list(journal.read(path, 0))


def test_files_honour_the_umask(tmp_path: Path) -> None:
    fsutil.atomic_write_bytes(tmp_path / "f", b"x")
    mode = (tmp_path / "f").stat().st_mode & 0o777
    assert mode == 0o666 & ~fsutil.current_umask()
    assert mode & 0o044 or fsutil.current_umask() & 0o044  # readable by others under 022
