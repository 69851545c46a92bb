"""[validate] through whole runs: emulator rounds, and a stand-in for a lab's validator
command (tests/fixtures/standin-validator.py: grasp i of a round with seed s passes when
(s + i) % 3 != 0). The quota counts grasps that passed, exactly; the datasets are the same
however many GPUs and after a kill; a validator that fails is retried, then stops the run;
a changed validator is refused on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from conftest import Layout, cli_env, run_cli, run_in_process

STANDIN = str(Path(__file__).parent / "fixtures" / "standin-validator.py")
COMMAND = ["{python}", STANDIN, "{results}", "{out}", "{seed}"]


def settings(**validate) -> dict:
    return dict(object_code_list=["obj_a", "obj_b"], target_count_per_object=10,
                round_batch_size=4, validate={"command": COMMAND, "workers": 2, **validate})


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def test_the_quota_counts_grasps_that_passed_exactly_and_the_same_on_1_or_3_gpus(
        layout: Layout) -> None:
    with capture_logs() as logs:
        assert run_in_process(layout.config(gpus=[0], **settings())) == 0
    for code in ("obj_a", "obj_b"):
        data = layout.final(code)
        assert len(data["energy"]) == 10 and data["passed"].all()
        assert ((data["seed"] + data["item_index"]) % 3 != 0).all()
        assert set(data["fail_reason"]) == {""} and "score" in data
        # the first that passed, in (round_id, item_index) order: nothing skipped
        rounds = sorted(set(data["round_id"].tolist()))
        first = rounds[0]
        seed = int(data["seed"][data["round_id"] == first][0])
        assert data["item_index"][data["round_id"] == first].tolist() == \
            [i for i in range(4) if (seed + i) % 3]
    validated = events(logs, "round_validated")
    assert validated and all(e["validated"] == 4 for e in validated)
    summary = events(logs, "run_finished")[0]["validation"]
    assert summary["passed"] + summary["failed_by"]["rule"] == summary["validated"]
    assert summary["passed"] >= 20 and summary["rounds_to_validate"] == 0
    from supervisor.commands.status import render, summarize
    from supervisor.run.resume import open_state

    config = layout.config(gpus=[0], **settings())
    status = summarize(config, open_state(config))
    assert status["validation"]["passed"] == summary["passed"]
    assert status["per_object"][0]["validation"]["failed_by"] == {
        "rule": summary["per_object"]["obj_a"]["failed_by"]["rule"]}
    text = render(status)
    assert f"validation: {summary['passed']} of {summary['validated']} validated grasps " \
           f"passed" in text and "; to validate: 0 round(s), 0 grasps" in text
    assert " passed " in text.splitlines()[-3]  # the table's column
    from supervisor.commands.report import page

    info = run_cli("dataset-info", str(config.exp_dir / "final"))
    assert info.returncode == 0 and "validation figures (every grasp here passed):" in \
        info.stdout and "  score " in info.stdout, info.stderr
    report = page.build(config.exp_dir)
    assert "<h2>Validation</h2>" in report and "passed validation" in report
    assert f"Validation: {summary['passed']} of {summary['validated']} grasps passed; " \
           f"failed: rule {summary['failed_by']['rule']}" in report
    m = layout.manifest()
    rounds = [r for o in m["objects"].values() for r in o["rounds"].values()]
    assert all(r["passed"] is not None for r in rounds if r["status"] == "merged")
    assert m["identity"]["validate"] == {"command": COMMAND}
    assert run_in_process(layout.config(exp_name="three", gpus=[0, 1, 2], **settings())) == 0
    for code in ("obj_a", "obj_b"):
        one, three = layout.final(code), layout.final(code, "three")
        assert one.keys() == three.keys()
        for key in one:
            np.testing.assert_array_equal(one[key], three[key], err_msg=f"{code} {key}")


def test_a_validator_that_crashes_or_hangs_once_is_retried(layout: Layout) -> None:
    for n, fault in enumerate(("crash", "hang", "junk")):
        env = {"STANDIN_VALIDATOR_FAULT": fault,
               "STANDIN_VALIDATOR_ONCE": str(layout.root / f"once-{fault}")}
        config = layout.config(exp_name=f"e{n}", **settings(env=env, timeout_s=2.0))
        with capture_logs() as logs:
            assert run_in_process(config) == 0, fault
        retries = events(logs, "validation_retry")
        assert len(retries) == 1, (fault, retries)
        assert {"crash": "exit code 3", "hang": "timeout_s = 2", "junk": "malformed output"}[
            fault] in retries[0]["reason"]
        assert len(layout.final("obj_a", f"e{n}")["energy"]) == 10


def test_a_validator_that_keeps_failing_stops_the_run_and_merges_nothing_unvalidated(
        layout: Layout) -> None:
    config = layout.config(**settings(env={"STANDIN_VALIDATOR_FAULT": "crash"},
                                      max_attempts=2))
    with capture_logs() as logs:
        assert run_in_process(config) == 1
    stopped = events(logs, "run_stopped")
    assert len(stopped) == 1
    assert stopped[0]["reason"].startswith(
        "[validate] command '{python}' failed 2 times on round t__obj_")
    assert "exit code 3 (standin-validator: crashed on purpose)" in stopped[0]["reason"]
    m = layout.manifest()
    assert all(o["collected"] == 0 for o in m["objects"].values())
    statuses = {r["status"] for o in m["objects"].values() for r in o["rounds"].values()}
    assert "merged" not in statuses and "validating" in statuses
    # Fixed, the same experiment goes on from its rounds, validating them now.
    assert run_in_process(layout.config(**settings())) == 0
    with capture_logs():
        assert run_in_process(layout.config(exp_name="clean", **settings())) == 0
    for key, value in layout.final("obj_a").items():
        np.testing.assert_array_equal(value, layout.final("obj_a", "clean")[key])


def test_rounds_started_past_the_quota_are_at_most_about_one_per_gpu(layout: Layout) -> None:
    """A third of the grasps fail: 30 passed grasps need 12 rounds of 4 (8 pass each 3
    rounds). However they are spread, no more than one extra round per GPU starts."""
    config = layout.config(gpus=[0, 1, 2], **{**settings(), "object_code_list": ["obj_a"],
                                              "target_count_per_object": 30})
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    started = {(e["object_code"], e["round"]) for e in events(logs, "round_started")}
    merged = layout.manifest()["objects"]["obj_a"]["rounds"]
    needed = max(int(r) for r, v in merged.items() if v["status"] == "merged") + 1
    assert needed <= len(started) <= needed + 3, (needed, len(started))


def test_an_object_whose_grasps_never_pass_stops_at_max_rounds_saying_why(
        layout: Layout) -> None:
    config = layout.config(max_rounds=3, **{
        **settings(env={"STANDIN_VALIDATOR_FAULT": "fail-all"}), "object_code_list": ["obj_a"]})
    with capture_logs() as logs:
        assert run_in_process(config) == 1
    failed = events(logs, "object_failed")
    assert failed[0]["reason"] == ("max_rounds = 3 reached: 0 of 12 validated grasps "
                                   "passed (0.0%); failed: rule 12")


def test_a_changed_validator_is_refused_on_resume(layout: Layout) -> None:
    path = layout.write_config(**settings())
    dry = run_cli(str(path), "--dry-run")
    assert dry.returncode == 0 and "Validation: the command {python} " in dry.stdout \
        and "; 2 worker process(es); the quota counts grasps that pass" in dry.stdout
    assert run_cli(str(path)).returncode == 0
    changed = layout.write_config(**settings(command=[*COMMAND, "--strict"]))
    refused = run_cli(str(changed), "--target_count_per_object", "20")
    assert refused.returncode == 2 and "validate" in refused.stderr, refused.stderr
    off = layout.write_config(**{**settings(), "validate": {}})
    refused = run_cli(str(off), "--target_count_per_object", "20")
    assert refused.returncode == 2 and "validate" in refused.stderr, refused.stderr
    plain = layout.write_config(exp_name="plain", object_code_list=["obj_a"])
    assert run_cli(str(plain)).returncode == 0
    later = layout.write_config(exp_name="plain", object_code_list=["obj_a"],
                                validate={"command": COMMAND})
    refused = run_cli(str(later), "--target_count_per_object", "20")
    assert refused.returncode == 2 and "[validate]" in refused.stderr, refused.stderr


def test_a_kill_during_validation_loses_nothing_and_the_dataset_is_the_same(
        layout: Layout) -> None:
    marks = layout.root / "marks"
    marks.mkdir()
    hang = {"STANDIN_VALIDATOR_DIR": str(marks), "STANDIN_VALIDATOR_FAULT": "hang"}
    path = layout.write_config(**settings(env=hang))
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", str(path)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # a round was produced; its validation hangs
        if json.loads(line)["event"] == "round_finished":
            break
    while not any(marks.iterdir()):  # the validator is running
        proc.poll()
        assert proc.returncode is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = layout.write_config(**settings(env={"STANDIN_VALIDATOR_DIR": str(marks)}))
    assert run_cli(str(resumed)).returncode == 0
    assert run_in_process(layout.config(exp_name="clean", **settings())) == 0
    for code in ("obj_a", "obj_b"):
        for key, value in layout.final(code).items():
            np.testing.assert_array_equal(value, layout.final(code, "clean")[key])


def test_near_duplicates_are_judged_among_grasps_that_passed(layout: Layout) -> None:
    dup = dict(dedup={"enabled": True}, env={"EMULATOR_NEAR_DUPLICATES": "0.5"})
    assert run_in_process(layout.config(gpus=[0], **settings(), **dup)) == 0
    assert run_in_process(layout.config(exp_name="three", gpus=[0, 1, 2], **settings(),
                                        **dup)) == 0
    m = layout.manifest()
    rounds = [r for o in m["objects"].values() for r in o["rounds"].values()
              if r["status"] == "merged"]
    assert any(r["unique"] < r["passed"] for r in rounds)  # duplicates among the passed
    assert all(r["unique"] <= r["passed"] <= r["accepted"] for r in rounds)
    for code in ("obj_a", "obj_b"):
        one, three = layout.final(code), layout.final(code, "three")
        assert len(one["energy"]) == 10
        for key in one:
            np.testing.assert_array_equal(one[key], three[key], err_msg=f"{code} {key}")


def test_show_draws_a_failed_grasp_with_its_reason_from_a_kept_round_folder(
        layout: Layout) -> None:
    path = layout.write_config(keep_intermediate=True, **{**settings(),
                                                          "object_code_list": ["obj_a"]})
    assert run_cli(str(path)).returncode == 0
    out = layout.root / "failed.html"
    shown = run_cli("show", str(path), "obj_a", "--failed", "--index", "0", "--out",
                    str(out), "--no-open")
    assert shown.returncode == 0, shown.stderr
    page = out.read_text()
    assert "failed: rule (round 0, item" in page
    gone = layout.write_config(exp_name="gone", **{**settings(), "object_code_list": ["obj_a"]})
    assert run_cli(str(gone)).returncode == 0  # round folders cleaned up once done
    refused = run_cli("show", str(gone), "obj_a", "--failed", "--no-open")
    assert refused.returncode == 2 and "folders are gone (keep_intermediate = true keeps " \
        "them)" in refused.stderr, refused.stderr


def test_final_npz_never_holds_a_grasp_not_yet_validated(layout: Layout, monkeypatch) -> None:
    """Without [dedup], a stride write while one round hangs in validation (the others
    validated around it) holds only grasps that passed: every write, not just the last."""
    from supervisor.dataset import final

    writes: list[np.ndarray] = []
    write = final.write

    def checked(path, columns):
        writes.append(np.asarray(columns["passed"]))
        return write(path, columns)

    monkeypatch.setattr(final, "write", checked)
    env = {"STANDIN_VALIDATOR_FAULT": "hang", "STANDIN_VALIDATOR_ONCE": str(layout.root / "once")}
    config = layout.config(merge_stride=1, **settings(env=env, timeout_s=2.0))
    assert run_in_process(config) == 0
    assert len(writes) > 2
    assert all(w.dtype == bool and w.all() for w in writes), [w.tolist() for w in writes]
