"""What users and their scripts rely on, pinned: the commands and their flags, the config
keys, the journal's events, the manifest's fields, final.npz's arrays, the GPU samples'
format, the log events and their fields, and that an experiment written by an older
version resumes. A change to any of these is a change for users: make it on purpose."""

from __future__ import annotations

import io
import json
import re
import shutil
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from conftest import Layout, run_in_process
from supervisor.commands import cli
from supervisor.core import events as ev
from supervisor.config.schema import SECTIONS, ValidateSettings
from supervisor.config.load import TOP_KEYS
from supervisor.gpus.samples import MAGIC, RECORD

PINNED = Path(__file__).resolve().parent / "fixtures"

COMMAND_FLAGS = {
    "": {"--help", "--log-format", "--live", "--no-live", "--dry-run", "--exp_name",
         "--experiments_dir", "--object_code_list", "--object_code_file",
         "--target_count_per_object", "--round_batch_size", "--num_iterations",
         "--seed_base", "--max_rounds", "--merge_stride", "--gpus", "--resume", "--no-resume",
         "--keep_intermediate", "--no-keep_intermediate"},
    "status": {"--json"},
    "export": {"--out", "--format", "--include-unlisted"},
    "recover": set(),
    "report": {"--out", "--no-gallery"},
    "show": {"--index", "--best", "--out", "--no-open", "--failed"},
    "dataset-info": {"--help", "--json", "--threshold", "--joint_tol_rad",
                     "--rotation_tol_rad", "--translation_tol_m"},
    "validate": {"--checkout", "--out", "--workers", "--object_mass_kg", "--force_n",
                 "--max_translation_m", "--max_rotation_deg", "--max_penetration_m",
                 "--friction", "--torsional_friction"},
}
OVERRIDES = COMMAND_FLAGS[""] - {"--help", "--log-format", "--live", "--no-live", "--dry-run"}


def flags(command: str) -> set[str]:
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        cli.main([*([command] if command else []), "--help"])
    return set(re.findall(r"(?<![\w-])--[a-z][a-z_-]*[a-z]", out.getvalue()))


@pytest.mark.parametrize("command", sorted(COMMAND_FLAGS))
def test_every_command_keeps_its_flags(command: str) -> None:
    expected = COMMAND_FLAGS[command] | {"--help"}
    if command in ("status", "export", "recover", "report", "show"):
        expected |= OVERRIDES  # the same config overrides as the run
    assert flags(command) == expected


def test_every_config_key_stays() -> None:
    assert TOP_KEYS == (
        "exp_name", "experiments_dir", "object_code_list", "object_code_file",
        "target_count_per_object", "round_batch_size", "num_iterations", "seed_base",
        "max_rounds", "merge_stride", "resume", "keep_intermediate", "gpus",
        "main", "gpu", "retry", "timeouts", "filter", "dedup", "cleanup", "disk", "logs",
        "backend", "view", "validate")
    assert [f.name for f in fields(ValidateSettings)] == [
        "kind", "command", "cwd", "env", "workers", "timeout_s", "max_attempts",
        "object_mass_kg", "force_n", "max_translation_m", "max_rotation_deg",
        "max_penetration_m", "friction", "torsional_friction"]
    sections = {name: [f.name for f in fields(cls)] for name, cls in SECTIONS.items()}
    assert sections == {
        "backend": ["kind", "address", "mode", "partition", "account", "qos", "time_limit",
                    "max_jobs", "gres", "sbatch_args"],
        "gpu": ["probe", "min_free_mib", "max_rounds_per_gpu", "round_memory_mib",
                "poll_interval_s", "quarantine_after", "nvml_timeout_s", "sample_interval_s",
                "pack_gain", "pack_window_s", "pack_retest_s"],
        "retry": ["max_attempts", "max_consecutive_failed_rounds"],
        "timeouts": ["round_timeout_s", "stall_timeout_s", "grace_s", "drain_deadline_s"],
        "cleanup": ["mode"], "disk": ["min_free_gib"], "logs": ["progress_interval_s"]}


JOURNAL_EVENTS = {
    "ObjectsRegistered": ["codes", "target"],
    "SupervisorStarted": ["pid", "host", "argv", "at", "cwd", "env", "gpus", "validator"],
    "SupervisorStopped": ["at", "exit_code"],
    "RoundStarted": ["code", "round_id", "gpu", "at", "node"],
    "RoundSpawned": ["code", "round_id", "pid", "proc_start"],
    "RoundPlaced": ["code", "round_id", "job_id", "node", "gpu"],
    "RoundProduced": ["code", "round_id", "produced", "accepted", "at", "duration_s", "gpu_mib"],
    "RoundDeduped": ["code", "round_id", "unique"],
    "RoundFailed": ["code", "round_id", "gpu", "reason", "at", "duration_s", "exit_code"],
    "RoundInterrupted": ["code", "round_id", "reason", "at", "duration_s"],
    "RoundOutOfMemory": ["code", "round_id", "gpu", "reason", "at", "duration_s", "alone",
                         "free_mib", "estimate_mib"],
    "PackingMeasured": ["gpu", "level", "gain", "grasps_per_s", "room", "round_s", "at",
                        "held", "sharing"],
    "GpuLost": ["gpu", "reason"],
    "NoCardFits": ["reason"],
    "GpuAdded": ["gpu"],
    "DatasetWritten": ["code", "used", "rows", "final_bytes", "final_mtime_ns", "digest"],
    "ObjectReloaded": ["code", "in_final", "from_folders", "missing", "final_bytes",
                       "final_mtime_ns", "digest", "validating"],
    "ObjectRecovered": ["code", "index", "target", "in_final", "from_folders", "folders"],
    "DatasetLost": ["code", "reason"],
    "RunStuck": ["reason"],
    "RoundValidated": ["code", "round_id", "passed", "failed_by", "at"],
    "ValidationStopped": ["code", "round_id", "reason"],
}


def test_journal_events_keep_their_names_and_fields() -> None:
    assert {name: [f.name for f in fields(t)] for name, t in ev.TYPES.items()} == JOURNAL_EVENTS


def test_gpu_samples_keep_their_format() -> None:
    assert MAGIC == b"gpusmp1\n" and RECORD.itemsize == 28
    assert RECORD.descr == [("t", "<f8"), ("gpu", "<u2"), ("util", "<i2"),
                            ("used_mib", "<i4"), ("total_mib", "<i4"), ("round", "<i4"),
                            ("round_mib", "<i4")]


def scenario(layout: Layout) -> dict[str, list[str]]:
    """Two runs that go through most of what a run logs: a failed and retried round, a
    result with NaN, near-duplicates, a raised target, an exhausted object."""
    common = dict(gpus=[0], round_batch_size=4, filter={"max_E_pen": 0.0015},
                  dedup={"enabled": True}, keep_intermediate=True,
                  env={"EMULATOR_FAULTS": "t__obj_a__r1=exit;t__obj_b__r0=nan",
                       "EMULATOR_NEAR_DUPLICATES": "0.3"})
    seen: dict[str, set[str]] = {}
    with capture_logs() as logs:
        assert run_in_process(layout.config(target_count_per_object=8, **common)) == 0
        assert run_in_process(layout.config(target_count_per_object=16, max_rounds=4,
                                            **common)) == 1
    for entry in logs:
        seen.setdefault(entry["event"], set()).update(entry)
    return {name: sorted(keys) for name, keys in sorted(seen.items())}


def test_log_events_keep_their_names_and_fields(layout: Layout) -> None:
    golden = json.loads((PINNED / "log-events-v1.json").read_text())
    assert scenario(layout) == golden


def test_manifest_and_final_npz_keep_their_fields(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_in_process(config) == 0
    m = layout.manifest()
    assert sorted(m) == ["config", "created_at", "exp_name", "gpus", "identity",
                         "journal_seq", "objects", "runs", "updated_at", "version"]
    obj = m["objects"]["obj_a"]
    assert sorted(obj) == ["collected", "consecutive_failures", "done", "final_bytes",
                           "final_digest", "final_mtime_ns", "index", "reason", "rounds",
                           "status", "target"]
    assert sorted(obj["rounds"]["0"]) == [
        "accepted", "attempts", "device", "exit_code", "failed_by", "failures", "finished_at",
        "gpu", "job_id", "name", "node", "passed", "pid", "proc_start", "produced", "reason",
        "round_id", "seed", "started_at", "status", "unique", "used", "validated_at"]
    assert sorted(m["gpus"]["0"]) == ["backoffs", "drifts", "footprint_mib", "gains", "gpu", "held_until",
                                      "level",
                                      "node", "ooms_alone", "rates", "reason", "reasons",
                                      "retest_at", "retest_from", "rounds_failed",
                                      "rounds_ok", "sharing", "status", "streak",
                                      "streak_rounds", "worse"]
    with np.load(layout.experiments / "t/final/obj_a/final.npz") as npz:
        arrays = {k: (npz[k].dtype.str, npz[k].shape) for k in npz.files}
    assert arrays == {
        **{k: ("<f8", (4, 28)) for k in ("qpos_left", "qpos_right", "qpos_left_st",
                                          "qpos_right_st")},
        **{k: ("<f8", (4,)) for k in ("scale", "energy", "E_fc", "E_dis", "E_pen", "E_spen",
                                       "E_joints")},
        **{k: ("<i8", (4,)) for k in ("seed", "round_id", "item_index")},
        "qpos_names": ("<U11", (28,))}
    logs = layout.experiments / "t/logs"
    assert (logs / "gpu_0.log").is_file() and (logs / "rounds/t__obj_a__r0.log").is_file()


def test_an_experiment_written_by_an_older_version_resumes(layout: Layout) -> None:
    """tests/fixtures/experiment-v1: killed mid-run by the supervisor of commit c501b72."""
    source = PINNED / "experiment-v1"
    shutil.copytree(source / "exp", layout.experiments)
    shutil.copytree(source / "data", layout.root / "data")
    settings = dict(gpus=[0], round_batch_size=4, merge_stride=1, keep_intermediate=True,
                    filter={"max_E_pen": 0.0015}, dedup={"enabled": True},
                    env={"EMULATOR_NEAR_DUPLICATES": "0.3"})
    assert run_in_process(layout.config(target_count_per_object=10, **settings)) == 0
    assert run_in_process(layout.config(exp_name="fresh", target_count_per_object=10,
                                        **settings)) == 0
    for code in ("obj_a", "obj_b", "obj_c"):
        old, fresh = layout.final(code), layout.final(code, "fresh")
        for key in fresh:
            np.testing.assert_array_equal(old[key], fresh[key], err_msg=f"{code} {key}")


def test_the_dataset_api_and_the_child_entry_points_stay() -> None:
    import supervisor.dataset
    from supervisor.backends.job import command
    from supervisor.dataset import final

    assert supervisor.dataset.load is final.load  # training code calls this
    assert (Path(supervisor.__file__).parent / "emulator" / "__main__.py").is_file()
    config_command = ("{python}", "{upstream_launcher}", "--name", "{name}", "--seed",
                      "{seed}")
    from types import SimpleNamespace

    config = SimpleNamespace(main=SimpleNamespace(command=config_command),
                             round_batch_size=4, num_iterations=5)
    job = SimpleNamespace(name="t__a__r0", object_code="a", seed=7, device=0)
    argv = command(config, job)  # type: ignore[arg-type]
    assert Path(argv[1]).is_file() and argv[1].endswith("upstream_launcher.py")
