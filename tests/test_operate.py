"""Operating a run: status, live view, export, the README's jq one-liners."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, ROOT, Layout, cli_env, json_lines, run_cli
from supervisor import dataset
from supervisor.dataset.export import LEGACY_ORDER, from_legacy
from supervisor.dataset.results import QPOS_NAMES


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The README's demo, with one failing attempt per object, run once for this module."""
    root = tmp_path_factory.mktemp("demo")
    text = (ROOT / "config.example.toml").read_text()
    faults = 'EMULATOR_FAULTS = "*__r1=exit", EMULATOR_STATE_DIR = "../state"'
    text, n = re.subn(r"env = \{ (.*) \}", r"env = { \1, " + faults + " }", text)
    assert n == 1
    text = text.replace('EMULATOR_ITER_S = "0.01"', 'EMULATOR_ITER_S = "0.002"')
    (root / "config.example.toml").write_text(text)
    shutil.copytree(ROOT / "demo", root / "demo",
                    ignore=shutil.ignore_patterns("data", "experiments"))
    proc = run_cli("config.example.toml", cwd=root)
    assert proc.returncode == 0, proc.stderr
    (root / "run.jsonl").write_text(proc.stdout)
    return root


def readme_jq_lines() -> list[str]:
    text = (ROOT / "docs" / "operating.md").read_text()
    block = text.split("### jq one-liners", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_jq_one_liners_work_on_the_demo_output(demo: Path) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    lines = readme_jq_lines()
    assert len(lines) == 5
    outputs = []
    for line in lines:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=demo, env=cli_env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (line, proc.stderr)
        outputs.append(proc.stdout)
    failures, per_gpu, one_object, summary, not_done = outputs
    assert re.search(r"^\s*3 exit code 3$", failures, re.M)
    gpus = [json.loads(line) for line in per_gpu.splitlines()]
    assert [g["gpu"] for g in gpus] == [0, 1] and all(g["rounds"] > 0 for g in gpus)
    progress = [json.loads(line) for line in one_object.splitlines()]
    assert [p["event"] for p in progress].count("object_done") == 1
    assert max(p["collected"] for p in progress) == 50
    assert json.loads(summary) | {"exit_code": 0, "objects_done": 3, "grasps": 150} \
        == json.loads(summary)
    assert not_done == ""


def test_every_demo_log_line_is_json_with_a_summary_last(demo: Path) -> None:
    events = list(json_lines((demo / "run.jsonl").read_text()))
    last = events[-1]
    assert last["event"] == "run_finished"
    for key in ("objects_done", "objects_failed", "grasps", "wall_s", "gpu_hours",
                "rounds_retried"):
        assert key in last
    assert last["rounds_retried"] == 3


def test_status_text_and_json(demo: Path) -> None:
    proc = run_cli("status", "config.example.toml", cwd=demo)
    assert proc.returncode == 0, proc.stderr
    assert "objects 3/3 done" in proc.stdout and "grasps 150/150" in proc.stdout
    assert "failures: exit code 3 x3" in proc.stdout
    data = json.loads(run_cli("status", "config.example.toml", "--json", cwd=demo).stdout)
    assert data["objects_done"] == 3 and data["grasps_done"] == data["grasps_total"] == 150
    assert data["failures_by_reason"] == {"exit code 3": 3}
    assert data["gpu_hours"] > 0 and data["eta_s"] == 0 and not data["run_live"]
    for obj in data["per_object"]:
        assert obj["collected"] == 50 and obj["rounds_failed"] == 0
        assert 0 < obj["acceptance_rate"] <= 1 and obj["grasps_per_gpu_hour"] > 0
    manifest = json.loads((demo / "demo/experiments/demo/manifest.json").read_text())
    for obj in data["per_object"]:
        rounds = manifest["objects"][obj["object_code"]]["rounds"].values()
        span = max(r["finished_at"] for r in rounds) - min(r["started_at"] for r in rounds)
        assert obj["grasps_per_hour"] == pytest.approx(50 / (span / 3600), rel=1e-3)


def test_status_of_a_run_that_ended_shows_its_cards_as_last_sampled(demo: Path) -> None:
    """Found by trying it: a finished run's status showed its last GPU sample as if the
    cards were doing that now."""
    from supervisor.commands.status import render

    data = json.loads(run_cli("status", "config.example.toml", "--json", cwd=demo).stdout)
    at = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    data["gpu_samples"] = {"sampled": True, "mean_util_percent": 40.0, "gpus": [
        {"gpu": 0, "at": at, "util_percent": 55, "used_mib": 1000, "total_mib": 80000}]}
    assert "GPUs at the last sample, 2026-03-04 05:06:07: 0 55% 1000/80000 MiB; mean " \
           "utilisation 40%" in render(data)
    assert "GPUs: 0 55% 1000/80000 MiB" in render({**data, "run_live": True})


def test_status_of_a_live_run(layout: Layout) -> None:
    path = layout.write_config(target_count_per_object=16, env={"EMULATOR_ITER_S": "0.01"},
                               num_iterations=20)
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", str(path)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "round_merged":
            break
    status = run_cli("status", str(path), "--json")
    data = json.loads(status.stdout)
    assert data["run_live"] and 0 < data["grasps_done"] < data["grasps_total"]
    assert data["eta_s"] is not None and data["eta_s"] > 0
    proc.stdout.read()
    assert proc.wait(timeout=60) == 0  # status did not disturb the run
    assert not json.loads(run_cli("status", str(path), "--json").stdout)["run_live"]


def test_status_takes_the_same_overrides_as_the_run(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path), "--exp_name", "other").returncode == 0
    data = json.loads(run_cli("status", str(path), "--exp_name", "other", "--json").stdout)
    assert data["exp_name"] == "other" and data["objects_done"] == 1


def test_status_without_a_run_is_a_clear_error(layout: Layout) -> None:
    proc = run_cli("status", str(layout.write_config()))
    assert proc.returncode == 2 and "has not started" in proc.stderr


def test_export_is_main_py_format_and_reimports_bit_for_bit(demo: Path) -> None:
    out = demo / "export"
    proc = run_cli("export", "config.example.toml", "--out", str(out), cwd=demo)
    assert proc.returncode == 0, proc.stderr
    real = np.load(FIXTURES / "results" / "probe1" / "Curver_Storage_Bin_Black_Small.npy",
                   allow_pickle=True)
    codes = [line.split(":")[0] for line in proc.stdout.splitlines()]
    assert len(codes) == 3
    for code in codes:
        items = np.load(out / f"{code}.npy", allow_pickle=True)
        assert items.dtype == object and items.shape == (50,)
        assert list(items[0])[:-1] == list(real[0])[:-1] == list(LEGACY_ORDER)
        assert tuple(items[0]["qpos_left"]) == QPOS_NAMES
        assert type(items[0]["E_pen"]) is float
        final = dataset.load(demo / "demo/experiments/demo/final" / code / "final.npz")
        back = from_legacy(out / f"{code}.npy")
        assert set(back) == set(final)  # qpos_names too, as dataset.load gives (#25)
        for key, value in back.items():
            assert value.dtype == final[key].dtype
            assert value.tobytes() == final[key].tobytes(), key


def test_live_view_on_stderr_leaves_stdout_json(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=8)
    live = run_cli(str(path), "--live")
    assert live.returncode == 0
    assert "GPU 0:" in live.stderr and "grasps 8/8" in live.stderr
    assert all(json.loads(line) for line in live.stdout.splitlines())
    path = layout.write_config(exp_name="quiet", object_code_list=["obj_a"],
                               target_count_per_object=8)
    quiet = run_cli(str(path))  # stderr is not a terminal: no live view
    assert quiet.returncode == 0 and "GPU 0:" not in quiet.stderr


def test_dataset_load_api(demo: Path) -> None:
    data = dataset.load(demo / "demo/experiments/demo/final/Curver_Storage_Bin_Black_Small"
                        / "final.npz")
    assert data["qpos_left"].shape == (50, 28) and data["seed"].dtype == np.int64


def test_status_of_a_live_run_with_no_round_running_gives_no_eta(demo: Path) -> None:
    """Found by a tester: a run waiting for ever showed an ETA of seconds."""
    from supervisor.commands.status import render

    data = json.loads(run_cli("status", "config.example.toml", "--json", cwd=demo).stdout)
    data["per_object"][0]["status"] = "active"
    data.update(objects_done=data["objects"] - 1, eta_s=4.0)
    assert "ETA 0h00m04s" in render(data)
    waiting = render({**data, "run_live": True, "rounds_running": 0})
    assert "no ETA: no round is running now" in waiting and "0h00m04s" not in waiting


def test_the_read_only_commands_work_without_the_checkout(demo: Path) -> None:
    """Found by a tester (#25): with the checkout moved (or the dataset copied to a
    laptop), status, export, report and show refused the config for its [main] cwd."""
    text = (demo / "config.example.toml").read_text()
    assert text.count('cwd = "demo/BimanGrasp-Optimization"') == 1
    (demo / "moved.toml").write_text(text.replace('cwd = "demo/BimanGrasp-Optimization"',
                                                  'cwd = "moved/BimanGrasp-Optimization"'))
    status = run_cli("status", "moved.toml", cwd=demo)
    assert status.returncode == 0 and "objects 3/3 done" in status.stdout, status.stderr
    export = run_cli("export", "moved.toml", "--out", str(demo / "moved-export"), cwd=demo)
    assert export.returncode == 0 and len(list((demo / "moved-export").glob("*.npy"))) == 3
    report = run_cli("report", "moved.toml", "--out", "moved-report/report.html", cwd=demo)
    assert report.returncode == 0, report.stderr
    why = f"[view] cwd {demo / 'moved/BimanGrasp-Optimization'} is not a folder"
    assert report.stdout.count(why) == 1 and "Traceback" not in report.stderr
    assert "wrists only" in (demo / "moved-report" / "gallery" /
                             "Curver_Storage_Bin_Black_Small.html").read_text()
    show = run_cli("show", "moved.toml", "Curver_Storage_Bin_Black_Small", "--no-open",
                   "--out", "moved-show.html", cwd=demo)
    assert show.returncode == 0 and show.stderr.count(why) == 1, show.stderr
    assert (demo / "moved-show.html").exists()
    # A run needs the checkout: the run, --dry-run and recover still refuse it.
    for args in (["moved.toml"], ["moved.toml", "--dry-run"], ["recover", "moved.toml"]):
        proc = run_cli(*args, cwd=demo)
        assert proc.returncode == 2 and "main.cwd" in proc.stderr \
            and "an existing folder" in proc.stderr, (args, proc.stderr)


def test_status_lines_up_object_codes_of_wide_characters(demo: Path) -> None:
    """Found by a tester (#25): object codes are users' file names; a CJK or emoji code
    took two columns a character and pushed its row's columns right."""
    import unicodedata

    from supervisor.commands.status import render

    def columns(text: str) -> int:  # as a terminal draws it
        return sum(0 if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Cf")
                   else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    data = json.loads(run_cli("status", "config.example.toml", "--json", cwd=demo).stdout)
    codes = ["杯子_01", "cafe\u0301_cup", "🍵" * 25]  # CJK; a combining accent; cut at 40
    for obj, code in zip(data["per_object"], codes):
        obj["object_code"] = code
    lines = render(data).splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("object "))
    rows = lines[header + 1:header + 4]
    assert [r.split(" ", 1)[0] for r in rows] == ["杯子_01", "cafe\u0301_cup", "🍵" * 20]
    for row, obj in zip(rows, data["per_object"]):
        code_field = row[:row.index(f" {obj['status']} ")]
        assert columns(code_field) == 40, row
        assert columns(row) == columns(lines[header]), row
