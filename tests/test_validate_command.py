"""``python -m supervisor validate``: main.py output made without the supervisor (a results
folder, .npy files, a final.npz) validated with the built-in validator on the stand-in
checkout, end to end: the pass rate and the failures by reason per object, the per-grasp
figures in --out (.csv or .npz), parallel workers, one line and exit 2 for what is
wrong."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from validate_grasps import BOX, STANDIN, as_main_py, clamp
from supervisor.commands import validate
from supervisor.dataset import final
from supervisor.dataset.results import to_columns, with_provenance


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A results folder (main.py's, without __meta__), a fork .npy named otherwise, and
    a final.npz in its object's folder."""
    (tmp_path / "results").mkdir()
    np.save(tmp_path / "results" / f"{BOX}.npy",
            as_main_py([clamp(-0.3), clamp(0.03), clamp(0.0015)]), allow_pickle=True)
    np.save(tmp_path / "fork.npy", as_main_py([clamp(-0.005)], BOX), allow_pickle=True)
    columns = with_provenance(to_columns(as_main_py([clamp(0.03), clamp(0.0015)]), None), 5, 2)
    final.write(tmp_path / "final" / BOX / "final.npz", columns)
    return tmp_path


def test_validate_prints_the_pass_rate_and_why_grasps_failed(data: Path) -> None:
    proc = run_cli("validate", str(data / "results"), str(data / "fork.npy"),
                   str(data / "final" / BOX / "final.npz"), "--checkout", str(STANDIN),
                   "--workers", "2", "--out", str(data / "figures.csv"))
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[0]
    assert line.startswith(f"{BOX}: 2 of 6 passed (33%); failed: penetration 2, "
                           f"translation 2; medians: translation ")
    assert line.endswith("initial penetration 1.5 mm")  # of 0, 0, 1.5, 1.5, 30, 30 mm
    with open(data / "figures.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["fail_reason"] for r in rows] == ["translation", "penetration", "",
                                                "translation", "penetration", ""]
    assert [r["index"] for r in rows] == ["0", "1", "2", "0", "0", "1"]
    assert rows[3]["path"] == str(data / "fork.npy") and rows[2]["passed"] == "True"


def test_validate_writes_the_figures_as_arrays(data: Path) -> None:
    proc = run_cli("validate", str(data / "results"), "--checkout", str(STANDIN),
                   "--workers", "1", "--max_penetration_m", "0.05", "--out",
                   str(data / "figures.npz"))
    assert proc.returncode == 0, proc.stderr
    with np.load(data / "figures.npz") as npz:
        assert npz["object_code"].tolist() == [BOX] * 3
        assert "penetration" not in npz["fail_reason"].tolist()  # the override applies
        assert npz["penetration_m"][1] == pytest.approx(0.03, abs=1e-6)


@pytest.mark.parametrize("args, words", [
    (["fork.npy", "--checkout", "/nowhere"], "/nowhere is not a folder"),
    (["fork.npy", "--checkout", "CHECKOUT/.."], "left_shadow_hand.xml: no such file"),
    (["missing.npy", "--checkout", "CHECKOUT"], "missing.npy: no such file or folder"),
    (["empty", "--checkout", "CHECKOUT"], "empty: no *.npy"),
    (["fork.npy", "--checkout", "CHECKOUT", "--out", "x.json"], "a .npz or .csv file"),
    (["fork.npy", "--checkout", "CHECKOUT", "--workers", "0"], "--workers must be"),
    (["fork.npy", "--checkout", "CHECKOUT", "--force_n", "-1"], "--force_n must be"),
    (["fork.npy", "--checkout", "CHECKOUT", "--friction", "x"], "invalid float value"),
])
def test_validate_refuses_in_one_line(data: Path, args: list[str], words: str) -> None:
    (data / "empty").mkdir()
    names = {"CHECKOUT": str(STANDIN), "CHECKOUT/..": str(STANDIN.parent)}
    proc = run_cli("validate", *[names.get(a, a) for a in args], cwd=data)
    assert proc.returncode == 2 and proc.stdout == ""
    assert words in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr


def test_an_unreadable_result_file_is_named(data: Path) -> None:
    (data / "results" / "junk.npy").write_bytes(b"junk")
    proc = run_cli("validate", str(data / "results"), "--checkout", str(STANDIN))
    assert proc.returncode == 2 and "junk.npy: unreadable result file" in proc.stderr


def test_the_object_of_a_file_is_its_meta_else_its_name(data: Path) -> None:
    found = validate.sources([str(data / "fork.npy"), str(data / "results"),
                              str(data / "final")])
    assert [(s.path.name, s.code, len(s.items)) for s in found] == [
        ("fork.npy", BOX, 1), (f"{BOX}.npy", BOX, 3), ("final.npz", BOX, 2)]
    assert found[2].items[1]["__meta__"]["round_id"] == 2  # to_legacy's, from final.npz


def test_the_summary_of_nothing_but_penetrations() -> None:
    cols = {"passed": np.array([False, False]), "fail_reason": np.array(["penetration"] * 2),
            "max_translation_m": np.full(2, np.nan), "max_rotation_deg": np.full(2, np.nan),
            "penetration_m": np.array([0.02, 0.03])}
    assert validate.summary("obj", cols) == (
        "obj: 0 of 2 passed (0%); failed: penetration 2; medians: translation - mm, "
        "rotation - deg, initial penetration 25.0 mm")
