"""One validation task, ``python -m supervisor.validate.task REQUEST.json``, as the pool
(run/validation.py) runs it: the five columns of exactly the requested grasps, in the
request's order, written atomically; the same figures bit for bit in another process,
whatever else that process validated; a request it cannot serve is one line on stderr,
exit 1, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env
from validate_grasps import BOX, STANDIN, as_main_py, clamp
from supervisor.config.schema import ValidateSettings
from supervisor.validate import builtin, task

SETTINGS = ValidateSettings(kind="mujoco")
TASK = [sys.executable, "-m", "supervisor.validate.task"]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A round's result file, as main.py saves it (np.save of a list of dicts): hands
    apart, a pass, deep in the box, a gap."""
    path = tmp_path / "r" / f"{BOX}.npy"
    path.parent.mkdir()
    grasps = [clamp(-0.3), clamp(0.001), clamp(0.03), clamp(-0.005)]
    np.save(path, as_main_py(grasps, BOX), allow_pickle=True)
    return path


def request(tmp_path: Path, results: Path, items: list[int], name: str,
            changes: dict | None = None) -> Path:
    """The request file the pool writes (the keys of run/validation.py's _argv)."""
    req = {"results": str(results), "items": items, "object_code": BOX,
           "checkout": str(STANDIN), "settings": SETTINGS.protocol(),
           "out": str(tmp_path / name)}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**req, **(changes or {})}))
    return path


def run_task(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TASK, str(path)], env=cli_env(), capture_output=True,
                          text=True, timeout=60, cwd=path.parent)


def test_a_task_writes_its_items_figures_in_order_the_same_in_any_process(
        results: Path, tmp_path: Path) -> None:
    proc = run_task(request(tmp_path, results, [0, 1, 2, 3], "all.npz"))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()  # MuJoCo's warnings kept quiet
    # Here, after another object's scene was compiled in this process, two of them in
    # the other order.
    builtin.check(STANDIN, BOX, [clamp(0.002, scale=0.9)], SETTINGS)
    assert task.main([str(request(tmp_path, results, [3, 1], "two.npz"))]) == 0
    with np.load(tmp_path / "all.npz") as a, np.load(tmp_path / "two.npz") as b:
        assert list(a.files) == list(builtin.COLUMNS)
        assert a["passed"].tolist() == [False, True, False, False]
        assert a["fail_reason"].tolist() == ["translation", "", "penetration", "translation"]
        for key in builtin.COLUMNS:
            assert a[key][[3, 1]].tobytes() == b[key].tobytes(), key
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "all.npz", "all.npz.json", "r", "two.npz", "two.npz.json"]  # no temp file left


@pytest.mark.parametrize("changes, words", [
    ({"results": "none.npy"}, "none.npy: no result file"),
    ({"items": [0, 7]}, "item 7 is not in"),
    ({"object_code": "no_such_object"}, "no_such_object"),
    ({"settings": {"force_n": -1.0}}, "force_n must be"),
    ({"settings": {"gravity": 1.0}}, "unknown key(s) gravity"),
    ({"items": [True]}, "integer indices"),
    ({"out": ""}, "non-empty strings"),
    ({"settings": []}, "settings must be"),
])
def test_a_request_it_cannot_serve_is_one_line_and_nothing_written(
        results: Path, tmp_path: Path, capsys, changes: dict, words: str) -> None:
    path = request(tmp_path, results, [0], "out.npz", changes)
    assert task.main([str(path)]) == task.EXIT_FAILED
    err = capsys.readouterr().err
    assert words in err and err.startswith("validate: ") and err.count("\n") == 1, err
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("text, words", [
    ("not json", "not a JSON request"), ("[1, 2]", "a JSON object"),
    ('{"results": "r.npy"}', "the request lacks items, object_code"),
])
def test_a_malformed_request_is_named(tmp_path: Path, capsys, text: str, words: str) -> None:
    (tmp_path / "req.json").write_text(text)
    assert task.main([str(tmp_path / "req.json")]) == task.EXIT_FAILED
    assert words in capsys.readouterr().err


def test_the_process_fails_in_one_line_with_a_status_the_pool_retries(
        results: Path, tmp_path: Path) -> None:
    proc = run_task(request(tmp_path, results, [0], "out.npz", {"checkout": str(tmp_path)}))
    assert proc.returncode == task.EXIT_FAILED and proc.stdout == ""
    assert proc.stderr.startswith("validate: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "left_shadow_hand.xml" in proc.stderr
    missing = subprocess.run([*TASK, str(tmp_path / "gone.json")], env=cli_env(),
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == task.EXIT_FAILED and "gone.json" in missing.stderr
    assert subprocess.run(TASK, env=cli_env(), capture_output=True,
                          timeout=60).returncode == task.EXIT_USAGE
