"""dataset-info: the quality and diversity summary of final.npz files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env
from supervisor.commands import dataset_info
from supervisor.dataset import final as dataset, quality, results
from supervisor.emulator.grasps import make_grasps
from supervisor.config.schema import DedupSettings
from supervisor.dataset.dedup import dedup_mask

ENERGIES = ["energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints"]


def columns(code: str, seed: int, n: int, fraction: float = 0.2) -> dict[str, np.ndarray]:
    items = np.empty(n, dtype=object)
    items[:] = make_grasps(code, seed, n, 10000, (fraction, 0.001))
    return results.with_provenance(results.to_columns(items, n), seed, 0)


@pytest.fixture(scope="module")
def final_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exp") / "final"
    for code, seed, n in (("obj_a", 1, 300), ("obj_b", 2, 120)):
        path = root / code / "final.npz"
        path.parent.mkdir(parents=True)
        dataset.write(path, columns(code, seed, n))
    return root


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert dataset_info.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_for_one_object(final_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = final_dir / "obj_a" / "final.npz"
    rep = run_json(capsys, str(path))
    assert rep["all"] is None and len(rep["objects"]) == 1
    obj = rep["objects"][0]
    data = dataset.load(path)
    assert (obj["object_code"], obj["count"]) == ("obj_a", 300)
    assert list(obj["energies"]) == ENERGIES
    pen = obj["energies"]["E_pen"]
    assert pen["min"] == data["E_pen"].min() and pen["max"] == data["E_pen"].max()
    assert pen["median"] == pytest.approx(np.median(data["E_pen"]))
    assert pen["p5"] == pytest.approx(np.quantile(data["E_pen"], 0.05))
    for key, rows in obj["filters"].items():
        values = data[key[len("max_"):]]
        assert 1 <= len(rows) <= 6
        for row in rows:
            assert row["kept"] == int((values <= row["threshold"]).sum())
    nn = obj["nearest_neighbour"]
    assert nn["within"]["1"] == 60  # the 20% copies of attractors, nothing else
    assert nn["within"]["1"] <= nn["within"]["2"] <= nn["within"]["4"]
    assert nn["quantiles"]["min"] < 1 and nn["quantiles"]["median"] is None  # > cap
    assert obj["dedup_keeps"] == int(dedup_mask(data, DedupSettings()).sum()) < 300
    assert rep["dedup_tolerances"] == {"joint_tol_rad": 0.05, "rotation_tol_rad": 0.05,
                                       "translation_tol_m": 0.005}


def test_json_for_a_final_folder_has_all_objects(final_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rep = run_json(capsys, str(final_dir))
    assert [o["object_code"] for o in rep["objects"]] == ["obj_a", "obj_b"]
    every = rep["all"]
    assert (every["objects"], every["count"]) == (2, 420)
    assert every["dedup_keeps"] == sum(o["dedup_keeps"] for o in rep["objects"])
    assert every["nearest_neighbour"]["within"]["1"] == sum(
        o["nearest_neighbour"]["within"]["1"] for o in rep["objects"])
    assert every["energies"]["energy"]["max"] == max(
        o["energies"]["energy"]["max"] for o in rep["objects"])


def test_tolerances_and_thresholds_from_the_command_line(
        final_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(final_dir / "obj_a" / "final.npz")
    tiny = run_json(capsys, path, "--joint_tol_rad", "1e-4", "--translation_tol_m", "1e-4")
    assert tiny["objects"][0]["nearest_neighbour"]["within"]["1"] == 0
    rows = run_json(capsys, path, "--threshold", "max_E_pen=0.0015",
                    "--threshold", "energy=123")["objects"][0]["filters"]
    assert {"threshold": 0.0015, "kept": int(
        (dataset.load(path)["E_pen"] <= 0.0015).sum())} in rows["max_E_pen"]
    assert rows["max_energy"][-1] == {"threshold": 123.0, "kept": 300}


def test_text_output(final_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset_info.main([str(final_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dedup tolerances: joints 0.05 rad")
    for needle in ("obj_a  (", "grasps: 300", "grasps: 120", "all 2 objects", "grasps: 420",
                   "E_pen", "max_E_pen", "nearest neighbour (1.0 = at the dedup tolerances)",
                   "median >8", "within 1: 60 (20.0%)", "would keep"):
        assert needle in out, needle


def test_an_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "final.npz"
    dataset.write(path, dataset.empty_columns())
    obj = run_json(capsys, str(path))["objects"][0]
    assert obj["count"] == 0 and obj["energies"]["energy"]["min"] is None
    assert dataset_info.main([str(path)]) == 0
    assert "grasps: 0" in capsys.readouterr().out


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04truncated"])
def test_corrupt_file_is_one_line_and_exit_2(tmp_path: Path, content: bytes,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "obj" / "final.npz"
    path.parent.mkdir()
    path.write_bytes(content)
    assert dataset_info.main([str(path)]) == 2
    err = capsys.readouterr()
    assert err.out == "" and err.err.count("\n") == 1 and str(path) in err.err


def test_wrong_schema_missing_file_empty_folder_bad_threshold(
        tmp_path: Path, final_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, energy=np.zeros(3))
    cases = [([str(wrong)], "missing array"),
             ([str(tmp_path / "nope.npz")], "no such file"),
             ([str(tmp_path)], "no final.npz"),
             ([str(final_dir), "--threshold", "E_nope=1"], "E_nope"),
             ([str(final_dir), "--rotation_tol_rad", "9"], "rotation_tol_rad")]
    for argv, needle in cases:
        assert dataset_info.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("dataset-info: ") and needle in err and err.count("\n") == 1


def test_module_entry_point(final_dir: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "supervisor.commands.dataset_info", str(final_dir), "--json"],
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and json.loads(proc.stdout)["all"]["count"] == 420
    proc = subprocess.run([sys.executable, "-m", "supervisor.commands.dataset_info", "/nonexistent/x.npz"],
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("no such file")


@pytest.mark.parametrize("values,expected", [
    (np.linspace(0.0002, 0.004, 500), [0.0005, 0.001, 0.002]),
    (np.linspace(1.0, 1.05, 50), [1.0, 2.0]),
    (np.zeros(10), [0.0]),
])
def test_threshold_ladder(values: np.ndarray, expected: list[float]) -> None:
    ladder = quality.threshold_ladder(values)
    assert all(t in ladder for t in expected) and ladder == sorted(ladder)
    assert all(float(f"{t:.1g}") == t for t in ladder)


def test_neighbour_summary_caps_and_counts() -> None:
    s = quality.neighbour_summary(np.array([0.5, 0.5, 3.0, np.inf]), cap=8.0)
    assert s["within"] == {"1": 2, "2": 2, "4": 3}
    assert s["quantiles"]["min"] == 0.5 and s["quantiles"]["max"] is None
