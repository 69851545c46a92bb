"""The validation worker, ``python -m supervisor.validate.worker``, as the pipeline drives it:
JSON requests on stdin, an .npz per request and one answer line each, bad requests
answered and survived, EOF ends it; its figures are the same bit for bit in another
process, whatever else it validated; ``VALIDATOR_FAULT`` makes it crash, hang or write
junk."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import cli_env
from validate_grasps import BOX, STANDIN, as_main_py, clamp
from supervisor.config.schema import ValidateSettings
from supervisor.validate import builtin, worker

SETTINGS = ValidateSettings(kind="mujoco")
WORKER = [sys.executable, "-m", "supervisor.validate.worker"]


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A round's result file, as main.py saves it (np.save of a list of dicts)."""
    path = tmp_path / "r" / f"{BOX}.npy"
    path.parent.mkdir()
    grasps = [clamp(-0.3), clamp(0.001), clamp(0.03), clamp(-0.005)]
    np.save(path, as_main_py(grasps, BOX), allow_pickle=True)
    return path


def request(results: Path, items: list[int], out: Path, **changes) -> str:
    req = {"results": str(results), "items": items, "object_code": BOX,
           "checkout": str(STANDIN), "settings": SETTINGS.protocol(), "out": str(out)}
    return json.dumps({**req, **changes}) + "\n"


def run_worker(lines: list[str], env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(WORKER, input="".join(lines), env={**cli_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def answers(proc: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_the_worker_answers_each_request_and_survives_bad_ones(results: Path,
                                                               tmp_path: Path) -> None:
    lines = [request(results, [0, 2], tmp_path / "a.npz"), "not json\n",
             request(tmp_path / "none.npy", [0], tmp_path / "b.npz"),
             request(results, [7], tmp_path / "c.npz"),
             request(results, [0], tmp_path / "d.npz", object_code="no_such_object"),
             request(results, [0], tmp_path / "e.npz", settings={"force_n": -1.0}),
             json.dumps({"results": str(results)}) + "\n",
             request(results, [2, 0], tmp_path / "f.npz")]
    proc = run_worker(lines)
    assert proc.returncode == 0, proc.stderr  # EOF ends it
    got = answers(proc)
    assert [a["ok"] for a in got] == [True, False, False, False, False, False, False, True]
    assert got[0] == {"ok": True, "n": 2}
    for answer, words in zip(got[1:7], ("not a JSON request", "no result file",
                                        "item 7 is not in", "no_such_object",
                                        "force_n must", "lacks items")):
        assert words in answer["error"] and "\n" not in answer["error"], answer
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "f.npz") as f:
        assert list(a.files) == list(builtin.COLUMNS)
        assert a["fail_reason"].tolist() == ["translation", "penetration"]
        for key in builtin.COLUMNS:
            assert a[key].tobytes() == f[key][::-1].tobytes(), key
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_figures_are_the_same_bit_for_bit_in_another_process(results: Path,
                                                             tmp_path: Path) -> None:
    one = run_worker([request(results, [1, 3], tmp_path / "one.npz")])
    two = run_worker([request(results, [3], tmp_path / "warm.npz"),
                      request(results, [1], tmp_path / "two.npz")])
    assert one.returncode == two.returncode == 0
    here = builtin.check(STANDIN, BOX, [clamp(0.001)], SETTINGS)
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        assert a["passed"].tolist() == [True, False]
        for key in builtin.COLUMNS:
            assert a[key][:1].tobytes() == b[key].tobytes() == here[key].tobytes(), key


def test_validator_fault_crash_and_junk(results: Path, tmp_path: Path) -> None:
    lines = [request(results, [0], tmp_path / "a.npz"), request(results, [0], tmp_path / "b.npz")]
    crashed = run_worker(lines, {worker.FAULT_VAR: "crash"})
    assert (crashed.returncode, crashed.stdout) == (worker.CRASH_EXIT, "")
    junk = run_worker(lines, {worker.FAULT_VAR: "junk"})
    assert answers(junk) == [{"ok": True, "n": 1}] * 2  # it says ok, as a broken one would
    with pytest.raises(ValueError):
        np.load(tmp_path / "a.npz")
    with np.load(tmp_path / "b.npz") as b:  # only the first request of each process
        assert b["fail_reason"].tolist() == ["translation"]
    assert run_worker([], {worker.FAULT_VAR: "explode"}).returncode == 2


def test_validator_fault_hang_answers_nothing(results: Path, tmp_path: Path) -> None:
    proc = subprocess.Popen(WORKER, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            env={**cli_env(), worker.FAULT_VAR: "hang"}, text=True)
    try:
        proc.stdin.write(request(results, [0], tmp_path / "a.npz"))
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 1.5)
        assert ready == [] and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "a.npz").exists()


@pytest.mark.parametrize("line, words", [
    ("[1, 2]", "a JSON object"),
    ('{"results": "r", "items": [0], "object_code": "b", "checkout": "c", '
     '"settings": {}, "out": ""}', "non-empty strings"),
    ('{"results": "r", "items": [true], "object_code": "b", "checkout": "c", '
     '"settings": {}, "out": "o"}', "integer indices"),
    ('{"results": "r", "items": [0], "object_code": "b", "checkout": "c", '
     '"settings": [], "out": "o"}', "settings must be"),
])
def test_a_malformed_request_is_named(line: str, words: str) -> None:
    with pytest.raises(worker.RequestError, match=words):
        worker.parse(line)
