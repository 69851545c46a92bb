"""One check of a final.npz (supervisor.dataset.integrity) for status, export, resume and recover:
a file that is another object's, altered, unreadable, missing or short is never
exported, status says what is wrong, and the repair it advises works."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from conftest import Layout, full_disk, run_in_process
from supervisor.commands import cli
from supervisor.dataset import integrity
from supervisor.storage import paths
from supervisor.storage.store import load_state

CODES = ["obj_a", "obj_b", "obj_c"]


def command(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what ran before (a run's logs)
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


SETTINGS = dict(target_count_per_object=6, round_batch_size=4)


@pytest.fixture
def done(layout: Layout) -> tuple[Layout, Path, dict]:
    """A finished run of three objects, round folders removed (the default cleanup)."""
    path = layout.write_config(**SETTINGS)
    assert run_in_process(layout.config(**SETTINGS)) == 0
    return layout, path, {code: layout.final(code) for code in CODES}


def rerun(layout: Layout, **settings) -> tuple[int, list[dict]]:
    with capture_logs() as logs:
        code = run_in_process(layout.config(**settings))
    return code, logs


def final(layout: Layout, code: str) -> Path:
    return paths.final(layout.experiments / "t", code)


def status(capsys, path: Path) -> dict:
    code, out, _ = command(capsys, "status", str(path), "--json")
    assert code == 0
    return {o["object_code"]: o for o in json.loads(out)["per_object"]}


def same(a: dict, b: dict) -> None:
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_swapped_final_npz_is_named_never_exported_and_recover_puts_it_back(
        done, capsys, tmp_path: Path) -> None:
    layout, path, before = done
    a, b = final(layout, "obj_a"), final(layout, "obj_b")
    swap = a.with_name("swap")
    a.rename(swap)
    b.rename(a)
    swap.rename(b)
    per = status(capsys, path)
    assert per["obj_a"]["status"] == per["obj_b"]["status"] == "broken"
    assert "obj_b's grasps" in per["obj_a"]["problem"]
    assert "obj_a's grasps" in per["obj_b"]["problem"]
    assert "recover" in per["obj_a"]["repair"] and per["obj_c"]["problem"] is None
    out = tmp_path / "out"
    code, text, err = command(capsys, "export", str(path), "--out", str(out))
    assert code == 1 and "obj_b's grasps" in err
    assert sorted(p.name for p in out.iterdir()) == ["obj_c.npy"]  # never under a wrong name
    # A rerun refuses rather than pass them off (it exited 0 with no word), naming both.
    code, _, err = command(capsys, str(path))
    assert code == 2 and "2 final.npz" in err and "obj_a:" in err and "obj_b:" in err
    code, text, _ = command(capsys, "recover", str(path))
    assert code == 0
    assert "obj_a: put back its final.npz, found in obj_b's folder" in text
    for code_ in CODES:
        same(before[code_], layout.final(code_))
    assert all(o["problem"] is None for o in status(capsys, path).values())
    assert command(capsys, "export", str(path), "--out", str(out))[0] == 0


@pytest.mark.parametrize("damage", ["deleted", "altered", "unreadable"])
def test_a_damaged_final_npz_is_rebuilt_by_the_advised_repair(done, capsys, damage) -> None:
    layout, path, before = done
    target = final(layout, "obj_b")
    if damage == "deleted":
        target.unlink()
    elif damage == "altered":  # same rounds and rows, other values: the digest tells
        data = dict(np.load(target))
        data["energy"] = data["energy"] * 0.5
        np.savez(target, **data)
    else:
        target.write_bytes(b"PK\x03\x04 junk")
    problem = status(capsys, path)["obj_b"]
    assert problem["status"] == "broken"
    assert {"deleted": "missing", "altered": "other values",
            "unreadable": "unreadable"}[damage] in problem["problem"]
    if damage == "deleted":
        # The repair is a rerun, and it says what the rerun does: its folders are gone.
        assert problem["repair"].startswith("a rerun rebuilds it (runs again the 2 round(s)")
    else:
        assert command(capsys, str(path))[0] == 2  # refused: recover first
        code, text, _ = command(capsys, "recover", str(path))
        assert code == 0 and "obj_b: moved aside" in text and "a rerun rebuilds it" in text
        assert list(target.parent.glob("final.npz.broken-*"))  # nothing deleted
    code, logs = rerun(layout, **SETTINGS)
    assert code == 0
    started = {e["round"] for e in logs if e["event"] == "round_started"}
    assert started == {"t__obj_b__r0", "t__obj_b__r1"}  # the same rounds, nothing else
    for code in CODES:
        same(before[code], layout.final(code))


def test_a_deleted_final_npz_with_kept_folders_is_re_read_not_rerun(layout: Layout,
                                                                    capsys) -> None:
    path = layout.write_config(keep_intermediate=True, **SETTINGS)
    assert run_in_process(layout.config(keep_intermediate=True, **SETTINGS)) == 0
    before = layout.final("obj_a")
    final(layout, "obj_a").unlink()
    repair = status(capsys, path)["obj_a"]["repair"]
    assert repair.startswith("a rerun rebuilds it (re-reads 2 kept round folder(s))")
    code, text, _ = command(capsys, "recover", str(path))  # says the same, changes nothing
    assert code == 0 and "obj_a: final.npz is missing; a rerun rebuilds it" in text
    code, logs = rerun(layout, keep_intermediate=True, **SETTINGS)
    assert code == 0 and not [e for e in logs if e["event"] == "round_started"]
    same(before, layout.final("obj_a"))


def test_after_a_full_disk_status_advises_the_rerun_that_repairs_it(layout: Layout,
                                                                    capsys) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=12,
                               gpus=[0])
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=12, gpus=[0])
    with full_disk(lambda n, rows: rows == 12), capture_logs() as logs:  # the final write
        assert run_in_process(config) == 1
    summary = [e for e in logs if e["event"] == "run_finished"][0]
    assert summary["objects_done"] == 0 and summary["objects_unfinished"] == 1
    per = status(capsys, path)["obj_a"]
    assert "the last write failed" in per["problem"]
    assert per["repair"].startswith("a rerun rebuilds it")
    assert run_in_process(config) == 0
    assert len(layout.final("obj_a")["energy"]) == 12


def test_objects_no_longer_listed_are_shown_and_exported_only_when_asked(
        done, capsys, tmp_path: Path) -> None:
    layout, path, _ = done
    fewer = layout.write_config(name="fewer.toml", object_code_list=["obj_a"], **SETTINGS)
    code, out, _ = command(capsys, "status", str(fewer), "--json")
    unlisted = json.loads(out)["not_in_list"]
    assert [o["object_code"] for o in unlisted] == ["obj_b", "obj_c"]
    assert all(not o["listed"] and o["in_final"] == 6 for o in unlisted)
    assert "not in the current list (2" in command(capsys, "status", str(fewer))[1]
    code, out, _ = command(capsys, "export", str(fewer), "--out", str(tmp_path / "one"))
    assert code == 0 and "--include-unlisted" in out
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["obj_a.npy"]
    code, out, _ = command(capsys, "export", str(fewer), "--out", str(tmp_path / "all"),
                           "--include-unlisted")
    assert code == 0 and "(not in the current list)" in out
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "obj_a.npy", "obj_b.npy", "obj_c.npy"]


def test_judge_by_plain_calls(done) -> None:
    layout, _, before = done
    state = load_state(layout.config(**SETTINGS))
    cols = {k: v for k, v in before["obj_a"].items() if k != "qpos_names"}
    assert integrity.judge(state, "obj_a", 1000, cols).ok
    foreign = integrity.judge(state, "obj_b", 1000, cols)
    assert foreign.kind == integrity.FOREIGN and foreign.owner == 0
    mixed = dict(cols, seed=cols["seed"] + np.arange(len(cols["seed"])) * 7)
    assert integrity.judge(state, "obj_a", 1000, mixed).kind == integrity.FOREIGN
    short = {k: v[:4] for k, v in cols.items()}  # round 0 whole: an earlier write
    assert integrity.judge(state, "obj_a", 1000, short).kind == integrity.STALE
    cut = {k: v[:3] for k, v in cols.items()}  # round 0 cut: no write leaves that
    assert integrity.judge(state, "obj_a", 1000, cut).kind == integrity.ALTERED
    other = dict(cols, round_id=cols["round_id"] + 5, seed=cols["seed"] + 5)
    assert integrity.judge(state, "obj_a", 1000, other).kind == integrity.ALTERED


def test_a_final_npz_cut_inside_a_round_is_altered_not_a_stale_write(done, capsys) -> None:
    """Found by a tester: a file cut in the middle of a round passed for an earlier write,
    and the rerun "rebuilt" a different dataset (a grasp of a later round in its place)."""
    layout, path, before = done
    target = final(layout, "obj_a")
    data = dict(np.load(target))
    np.savez(target, **{k: v if k == "qpos_names" else v[:5] for k, v in data.items()})
    per = status(capsys, path)["obj_a"]
    assert "the file was cut" in per["problem"] and "recover" in per["repair"]
    assert command(capsys, str(path))[0] == 2
    assert command(capsys, "recover", str(path))[0] == 0
    assert rerun(layout, **SETTINGS)[0] == 0
    same(before["obj_a"], layout.final("obj_a"))


def test_an_unlisted_object_is_told_to_come_back_to_the_list(done, capsys) -> None:
    layout, _, _ = done
    fewer = layout.write_config(name="fewer.toml", object_code_list=["obj_a"], **SETTINGS)
    final(layout, "obj_c").unlink()
    code, out, _ = command(capsys, "status", str(fewer), "--json")
    (obj_c,) = [o for o in json.loads(out)["not_in_list"] if o["object_code"] == "obj_c"]
    assert obj_c["repair"].startswith("obj_c is not in the current object list: add it back")


def test_listed_objects_not_started_yet_are_shown(done, capsys) -> None:
    layout, _, _ = done
    more = layout.write_config(name="more.toml", object_code_list=[*CODES, "obj_d"],
                               **SETTINGS)
    code, out, _ = command(capsys, "status", str(more), "--json")
    summary = json.loads(out)
    assert summary["objects"] == 4 and summary["objects_not_started"] == 1
    assert summary["per_object"][-1]["status"] == "not started"
    text = command(capsys, "status", str(more))[1]
    assert "objects 3/4 done" in text and "1 not started" in text and "all done" not in text
