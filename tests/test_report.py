"""The HTML report: its numbers, its page, and the demo's report in a real browser."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import ROOT, run_cli
from supervisor.commands.report import data as rd, page as report, series
from supervisor.gpus import sampler
from supervisor.gpus.probe import Reading
from supervisor.storage.lock import ExperimentLock
from supervisor.dataset.results import QPOS_NAMES


def bench(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rnd(rid: int, status: str, gpu: int | None, start: float | None, end: float | None,
        produced: int | None = 16, accepted: int | None = 8, failures: tuple = (),
        **extra: Any) -> dict[str, Any]:
    return {"round_id": rid, "name": f"e__x__r{rid}", "seed": rid, "status": status,
            "attempts": 1 + len(failures), "gpu": gpu, "produced": produced,
            "accepted": accepted, "used": accepted, "started_at": start, "finished_at": end,
            "failures": list(failures), **extra}


def fail(gpu: int, at: float, duration: float, reason: str = "exit code 3: boom",
         kind: str | None = None) -> dict[str, Any]:
    return {"attempt": 1, "reason": reason, "gpu": gpu, "at": at, "duration_s": duration,
            **({"kind": kind} if kind else {})}


def manifest(objects: dict[str, dict[str, Any]], **config: Any) -> dict[str, Any]:
    return {"version": 1, "exp_name": "e", "created_at": 0.0, "updated_at": 500.0,
            "config": {"round_batch_size": 16, "gpus": [0, 1], **config},
            "objects": objects, "journal_seq": 3}  # an unknown field: tolerated


def obj(rounds: list[dict[str, Any]], status: str = "active", target: int = 20,
        **extra: Any) -> dict[str, Any]:
    return {"index": 0, "target": target, "status": status, "collected": 0,
            "rounds": {str(r["round_id"]): r for r in rounds}, **extra}


@pytest.fixture
def m() -> dict[str, Any]:
    a = obj([
        rnd(0, "merged", 0, 100.0, 200.0, failures=(fail(1, 90.0, 40.0),)),  # retried on 0
        rnd(1, "merged", 1, 100.0, 210.0, accepted=12),
        rnd(2, "failed", 1, 215.0, 230.0, produced=None, accepted=None,
            failures=(fail(0, 212.0, 2.0), fail(1, 230.0, 15.0, "stalled: 600 s"))),
        rnd(3, "discarded", 0, 205.0, 300.0, accepted=5),
    ], status="done", target=20)
    b = obj([
        rnd(0, "running", 0, 400.0, None, produced=None, accepted=None, node="n2"),
        rnd(1, "pending", 1, 300.0, 320.0, produced=None, accepted=None,
            failures=(fail(1, 320.0, 20.0, "supervisor stopped", kind="interrupted"),)),
    ], target=40)
    return manifest({"a": a, "b": b}, filter={"E_pen": 0.0015})


def test_attempts_one_bar_per_attempt_never_twice(m: dict[str, Any]) -> None:
    att = rd.attempts(m, now=450.0)
    got = sorted(zip(att["code"], att["round_id"], att["outcome"], att["row"],
                     att["start"].tolist(), att["end"].tolist()))
    assert got == [
        ("a", 0, "failed", "GPU 1", 50.0, 90.0),
        ("a", 0, "merged", "GPU 0", 100.0, 200.0),
        ("a", 1, "merged", "GPU 1", 100.0, 210.0),
        ("a", 2, "failed", "GPU 0", 210.0, 212.0),
        ("a", 2, "failed", "GPU 1", 215.0, 230.0),  # the last attempt: in failures only
        ("a", 3, "discarded", "GPU 0", 205.0, 300.0),
        ("b", 0, "running", "n2/GPU 0", 400.0, 450.0),
        ("b", 1, "interrupted", "GPU 1", 300.0, 320.0),
    ]
    dead = rd.attempts(m, now=450.0, live=False)  # died with the supervisor, at its last write
    assert ("interrupted", 500.0) in zip(dead["outcome"], dead["end"].tolist())
    assert rd.row_order(att["row"]) == ["GPU 0", "GPU 1", "n2/GPU 0"]


def test_launch_gaps_count_idle_time_between_rounds_per_gpu() -> None:
    att = {"row": ["GPU 0"] * 3 + ["GPU 1"] * 3,
           "start": np.array([0.0, 12.0, 30.0, 0.0, 5.0, 9.0]),
           "end": np.array([10.0, 20.0, 40.0, 10.0, 8.0, 12.0])}  # GPU 1: two slots
    assert sorted(rd.launch_gaps(att).tolist()) == [0.0, 0.0, 2.0, 10.0]
    assert len(rd.launch_gaps({"row": [], "start": np.zeros(0), "end": np.zeros(0)})) == 0


def test_object_rows(m: dict[str, Any]) -> None:
    att = rd.attempts(m, now=450.0)
    a, b = rd.object_rows(m, att, {"e__x__r1": 7000, "e__x__r3": 9000})
    assert a | {"gpu_hours": 0} == {
        "object_code": "a", "status": "done", "collected": 20, "target": 20, "merged": 2,
        "failed": 1, "discarded": 1, "running": 0, "acceptance": 20 / 32, "after_dedup": None,
        "gpu_hours": 0, "grasps_per_gpu_hour": pytest.approx(20 / a["gpu_hours"]),
        "peak_mib": 9000, "pass_rate": None, "failures": "exit code 3 x2, stalled x1", "reason": None}
    assert a["gpu_hours"] == pytest.approx((40 + 100 + 110 + 2 + 15 + 95) / 3600)
    assert b["collected"] == 0 and b["acceptance"] is None and b["running"] == 1
    assert b["failures"] == "interrupted x1" and b["gpu_hours"] == pytest.approx(70 / 3600)


def test_acceptance_after_dedup_when_the_run_records_duplicates() -> None:
    m = manifest({"a": obj([rnd(0, "merged", 0, 0.0, 1.0, produced=10, accepted=8,
                                duplicates=2)])})
    (row,) = rd.object_rows(m, rd.attempts(m, 2.0), {})
    assert (row["acceptance"], row["after_dedup"]) == (0.8, 0.6)


def test_progress_is_clipped_at_each_target_and_ordered_in_time() -> None:
    m = manifest({
        "a": obj([rnd(0, "merged", 0, 0, 10.0, accepted=15), rnd(1, "merged", 0, 0, 30.0,
                  accepted=15), rnd(2, "finished", 0, 0, 20.0, accepted=15)], target=40),
        "b": obj([rnd(0, "merged", 1, 0, 15.0, accepted=5),
                  rnd(1, "failed", 1, 0, 16.0, accepted=None)], target=40),
    })
    p = rd.progress(m)
    assert p["t"].tolist() == [10.0, 15.0, 20.0, 30.0]
    assert p["total"].tolist() == [15, 20, 35, 45]  # a: 15, 30, then 40 (not 45)
    assert p["objects"]["a"][1].tolist() == [15, 30, 40]
    assert rd.progress(manifest({}))["total"].tolist() == []


def test_eta_and_headline(m: dict[str, Any]) -> None:
    att = rd.attempts(m, now=450.0)
    rows = rd.object_rows(m, att, {})
    # b needs 40, no rate seen yet (all of a batch of 16): 3 rounds of the mean successful
    # round (merged or discarded), on 2 GPUs
    mean_round = (100 + 110 + 95) / 3
    assert rd.eta_s(m, att, rows, 2) == pytest.approx(3 * mean_round / 2)
    h = rd.headline(m, rows, att, 55.5, {"r": 12_000})
    assert h | {"eta_s": 0, "launch_gap_s": 0} == {
        "objects": 2, "done": 1, "failed": 0, "grasps": 20, "target": 60, "finished": False,
        "wall_s": 400.0, "gpu_hours": pytest.approx(sum(r["gpu_hours"] for r in rows)),
        "mean_util_percent": 55.5, "launch_gap_s": 0, "eta_s": 0, "peak_round_mib": 12_000,
        "packing": None}  # no card packed ("auto" off)
    assert rd.thresholds(m) == {"E_pen": 0.0015}
    assert rd.thresholds(manifest({}, filter={"max_energy": 2})) == {"energy": 2.0}


def test_histogram_shows_the_bulk_and_the_threshold() -> None:
    values = np.r_[np.linspace(0, 1, 1000), 1e6]  # one outlier
    edges, counts = series.histogram(values, threshold=1.5)
    assert counts.sum() == 1001 and edges[0] < 0.002 and edges[-1] == 1.5
    assert counts[-1] == 1  # the outlier, in the last bin
    edges, counts = series.histogram(np.full(5, 2.0), None)
    assert counts.sum() == 5 and edges[0] < 2.0 < edges[-1]
    assert series.histogram(np.array([np.nan]), None)[1].sum() == 0


def test_downsample_keeps_the_tail_means_and_peaks() -> None:
    t = np.arange(10.0)
    util = np.array([0, 10, np.nan, np.nan, 40, 50, 60, 70, 80, 90.0])
    mem = np.arange(10.0)
    got_t, got_util, got_mem = series.downsample(t, util, mem, points=4, peak=(False, True))
    assert got_t.tolist() == [0.0, 3.0, 6.0, 9.0]
    assert got_util.tolist() == [5.0, 45.0, 70.0, 90.0]
    assert got_mem.tolist() == [2.0, 5.0, 8.0, 9.0]
    assert [a.tolist() for a in series.downsample(t[:3], mem[:3])] == [[0, 1, 2], [0, 1, 2]]
    t2, v2 = series.with_gaps(np.array([0.0, 10, 20, 1000, 1010]), np.arange(5.0))
    assert t2.tolist() == [0.0, 10.0, 20.0, 510.0, 1000.0, 1010.0] and np.isnan(v2[3])


def write_final(exp_dir: Path, code: str, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder = exp_dir / "final" / code
    folder.mkdir(parents=True, exist_ok=True)
    cols = {k: rng.random(n) for k in rd.ENERGY_TERMS}
    np.savez(folder / "final.npz", qpos_left=rng.random((n, 28)), qpos_names=np.array(QPOS_NAMES),
             round_id=np.arange(n), **cols)


def test_energies_read_only_the_energy_columns(tmp_path: Path) -> None:
    write_final(tmp_path, "a", 5)
    write_final(tmp_path, "b", 3, seed=1)
    (tmp_path / "final" / "c").mkdir()
    (tmp_path / "final" / "c" / "final.npz").write_bytes(b"PK\x03\x04 cut short")
    values, unreadable = series.energies(tmp_path, ["a", "b", "c", "missing"])
    assert unreadable == 1 and sorted(values) == sorted(rd.ENERGY_TERMS)
    a = np.load(tmp_path / "final" / "a" / "final.npz")
    assert values["E_pen"].dtype == np.float32 and len(values["E_pen"]) == 8
    assert np.array_equal(values["E_fc"][:5], a["E_fc"].astype(np.float32))
    big_endian = tmp_path / "final" / "d"  # not the fast path: numpy reads it
    big_endian.mkdir()
    np.savez(big_endian / "final.npz", energy=np.arange(3, dtype=">f8"))
    assert series.energies(tmp_path, ["d"])[0]["energy"].tolist() == [0, 1, 2]


def make_experiment(exp_dir: Path, m: dict[str, Any]) -> None:
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "manifest.json").write_text(json.dumps(m))
    write_final(exp_dir, "a", 20)
    store = sampler.SampleFile(exp_dir)
    for i in range(50):
        store.append(100.0 + 10 * i, {0: Reading(40_000, 80_000, 90, {}),
                                      1: Reading(70_000, 80_000, None, {})}, {})


def test_build_is_one_self_contained_page(tmp_path: Path, m: dict[str, Any]) -> None:
    make_experiment(tmp_path, m)
    page = report.build(tmp_path, now=450.0)
    # timeline, GPUs, progress, energies; plotly.js once, inline
    assert len(re.findall(r'class="plotly-graph-div"', page)) == 4
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", page)  # nothing fetched
    assert page.count("/*! For license information") <= 1 and "Plotly" in page
    assert "not sampled (no NVML)" not in page and "mean GPU utilisation</dt><dd>90%" in page
    assert '<td data-v="20">20/20</td>' in page and "exit code 3 x2, stalled x1" in page


def test_build_without_samples_or_grasps_says_so(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest({"a": obj([])})))
    page = report.build(tmp_path)
    assert "No GPU samples: NVML was not available" in page
    assert "not sampled (no NVML)" in page and "No round started yet." in page
    assert "No grasps delivered yet." in page
    with pytest.raises(rd.ReportError):
        report.build(tmp_path / "nothing")


def test_a_live_run_is_read_without_being_touched(tmp_path: Path, m: dict[str, Any],
                                                  monkeypatch) -> None:
    make_experiment(tmp_path, m)
    # live_holder also checks the holder's command line, which here is pytest's
    monkeypatch.setattr("supervisor.storage.lock.live_holder", lambda exp_dir: os.getpid())
    with ExperimentLock(tmp_path):  # the run holds its lock: the report never waits on it
        before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*")
                  if p.is_file()}
        out = report.write(tmp_path, tmp_path / "elsewhere" / "r.html")
        after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*")
                 if p.is_file() and p != out}
    assert after == before
    page = out.read_text()
    assert f"running (supervisor pid {os.getpid()})" in page and "running (1)" in page


def test_main_writes_beside_the_manifest_by_default(layout, capsys) -> None:
    config = layout.config()
    make_experiment(config.exp_dir, manifest({"a": obj([])}))
    assert report.main([str(layout.write_config())]) == 0
    assert (config.exp_dir / "report.html").exists()
    assert "report.html" in capsys.readouterr().out
    out = layout.root / "r.html"
    assert report.main([str(layout.write_config()), "--out", str(out),
                        "--exp_name", "t"]) == 0 and out.exists()


def test_the_report_subcommand_exit_codes(layout) -> None:
    config_path = layout.write_config()
    proc = run_cli("report", str(config_path), cwd=layout.root)
    assert proc.returncode == 2 and "no manifest" in proc.stderr
    assert proc.stderr.count("\n") == 1
    make_experiment(layout.experiments / "t", manifest({"a": obj([])}))
    proc = run_cli("report", str(config_path), "--out", "x.html", cwd=layout.root)
    assert proc.returncode == 0, proc.stderr
    assert (layout.root / "x.html").stat().st_size > 1_000_000


def test_at_scale_the_report_stays_small_and_fast(tmp_path: Path) -> None:
    """A tenth of the bench (bench/report.py: 2,000 objects x 30 rounds)."""
    exp_dir = tmp_path / "bench"
    bench("report").make_experiment(exp_dir, objects=200, rounds=30, gpus=8, target=20)
    started = time.monotonic()
    out = report.write(exp_dir)
    assert time.monotonic() - started < 10.0
    assert out.stat().st_size < 15e6 * 0.6


# -- in a real browser ------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    found = bench("screenshot_report").find_chromium()
    if found is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("CI=true but no chromium found: .ci/run installs Debian's chromium")
        pytest.skip("no chromium found (apt-get install chromium); the report's browser "
                    "test is skipped outside CI")
    return found


def check(page: Path, workdir: Path, chromium: str) -> dict[str, Any]:
    result = bench("screenshot_report").check_page(chromium, page, workdir)
    assert result["errors"] == []
    assert result["plots"] and result["rendered"] == result["plots"]
    return result


def test_the_demos_report_renders_in_chromium(tmp_path: Path, chromium: str) -> None:
    shots = bench("screenshot_report")
    page = shots.run_demo(tmp_path)
    result = check(page, tmp_path, chromium)
    assert len(result["plots"]) == 3  # no NVML in the demo: no GPU plot
    assert "merged (" in result["dom"] and "E_pen" in result["dom"]
    png = tmp_path / "report.png"
    shots.screenshot(chromium, page, png, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_every_plot_renders_with_samples_and_every_outcome(tmp_path: Path, chromium: str,
                                                           m: dict[str, Any]) -> None:
    make_experiment(tmp_path / "e", m)
    out = report.write(tmp_path / "e")
    result = check(out, tmp_path, chromium)
    assert len(result["plots"]) == 4
    for outcome in ("merged", "failed", "discarded", "interrupted"):
        assert f"{outcome} (" in result["dom"]


def test_the_browser_check_sees_javascript_errors(tmp_path: Path, chromium: str) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><html><head></head><body>"
                    '<div id="p1" class="plotly-graph-div"></div>'
                    "<script>undefinedFunction();</script></body></html>")
    result = bench("screenshot_report").check_page(chromium, page, tmp_path)
    assert any("undefinedFunction" in e for e in result["errors"])
    assert result["plots"] == ["p1"] and result["rendered"] == []


def test_report_data_includes_events_journaled_after_the_snapshot(tmp_path: Path) -> None:
    """A live run rewrites manifest.json only now and then: the journal fills the gap."""
    from supervisor.core import events as ev
    from supervisor.storage import journal, manifest as mf
    from supervisor.commands.report import data as report_data
    from supervisor.core.state import Policy, State
    from supervisor.core.transitions import apply

    exp = tmp_path / "e"
    state = State(Policy("e"), {}, {"exp_name": "e", "object_code_list": ["a"]}, 1.0)
    apply(state, ev.ObjectsRegistered(("a",), 8))
    mf.save(exp / "manifest.json", mf.Encoder().dumps(state))
    journal.Journal(exp / "journal.jsonl").append(
        [ev.encode(1, ev.RoundStarted("a", 0, 3, 2.0))])
    data = report_data.load_manifest(exp)
    assert data["objects"]["a"]["rounds"]["0"]["status"] == "running"
    assert data["objects"]["a"]["rounds"]["0"]["gpu"] == 3
