"""End-to-end runs in this process: real emulator children, a fake GPU probe."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from conftest import Layout, run_in_process
from supervisor.dataset import final as dataset
from supervisor.core import plan
from supervisor.gpus.fake import FakeProbe
from supervisor.dataset.results import QPOS_NAMES

BIG = 80_000  # MiB free on a fake GPU



def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def test_end_to_end_three_objects_two_gpus(layout: Layout) -> None:
    config = layout.config(target_count_per_object=10, round_batch_size=4,
                           keep_intermediate=True, gpus=[0, 1])
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    m = layout.manifest()
    for index, code in enumerate(["obj_a", "obj_b", "obj_c"]):
        obj = m["objects"][code]
        assert obj["index"] == index and obj["done"] and obj["collected"] == 10
        data = layout.final(code)
        assert len(data["energy"]) == 10  # 10 is not a multiple of the batch (4)
        for key in ("qpos_left", "qpos_right", "qpos_left_st", "qpos_right_st"):
            assert data[key].shape == (10, 28) and data[key].dtype == np.float64
        for key in ("scale", "energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints"):
            assert data[key].shape == (10,) and data[key].dtype == np.float64
        for key in ("seed", "round_id", "item_index"):
            assert data[key].dtype == np.int64
        assert tuple(data["qpos_names"]) == QPOS_NAMES
        for rid, rnd in obj["rounds"].items():
            rid = int(rid)
            assert rnd["name"] == f"t__{code}__r{rid}"
            assert rnd["seed"] == 1000 + index * 100000 + rid
            # The GPU trap: the child ended up on the GPU the supervisor gave it.
            text = (layout.rounds / rnd["name"] / "results" / "config.txt").read_text()
            assert f"physical_gpu='{rnd['gpu']}'" in text
            assert f"seed={rnd['seed']}," in text
        assert set(data["seed"] - data["round_id"]) == {1000 + index * 100000}
    assert {e["gpu"] for e in events(logs, "round_started")} == {0, 1}
    assert len(events(logs, "object_done")) == 3
    summary = events(logs, "run_finished")[0]
    assert summary["grasps"] == 30 and summary["objects_done"] == 3
    for e in events(logs, "round_started") + events(logs, "round_merged"):
        assert {"round", "object_code", "gpu"} <= set(e)


def test_a_resumed_run_s_summary_says_what_this_run_delivered(layout: Layout) -> None:
    """Found on the bench: grasps is the experiment's, wall_s this run's, so grasps per
    hour read from them after a resume counted the run before's grasps too."""
    config = layout.config(target_count_per_object=4, round_batch_size=4, gpus=[0])
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    first = events(logs, "run_finished")[0]
    assert (first["grasps"], first["grasps_this_run"]) == (12, 12)
    with capture_logs() as logs:
        assert run_in_process(layout.config(target_count_per_object=8, round_batch_size=4,
                                            gpus=[0])) == 0
    again = events(logs, "run_finished")[0]
    assert (again["grasps"], again["grasps_this_run"]) == (24, 12)


def test_objects_are_served_in_list_order(layout: Layout) -> None:
    config = layout.config(target_count_per_object=8, round_batch_size=4, gpus=[0])
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    started = [e["object_code"] for e in events(logs, "round_started")]
    assert started == sorted(started)  # obj_a's rounds, then obj_b's, then obj_c's
    done = [e["object_code"] for e in events(logs, "object_done")]
    assert done == ["obj_a", "obj_b", "obj_c"]


def arrays(layout: Layout, exp: str, codes=("obj_a", "obj_b", "obj_c")) -> dict:
    return {code: layout.final(code, exp) for code in codes}


def test_same_config_same_arrays_on_one_or_three_gpus(layout: Layout) -> None:
    common = dict(target_count_per_object=9, round_batch_size=4,
                  filter={"max_E_pen": 0.0015})
    assert run_in_process(layout.config(exp_name="one", gpus=[0], **common)) == 0
    three = layout.config(exp_name="three", gpus=[0, 1, 2], **common)
    assert run_in_process(three) == 0
    a, b = arrays(layout, "one"), arrays(layout, "three")
    for code in a:
        assert a[code].keys() == b[code].keys()
        for key in a[code]:
            np.testing.assert_array_equal(a[code][key], b[code][key])


def test_quality_filter_counts(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=12,
                           round_batch_size=8, filter={"max_E_pen": 0.0015})
    assert run_in_process(config) == 0
    data = layout.final("obj_a")
    assert len(data["E_pen"]) == 12 and np.all(data["E_pen"] <= 0.0015)
    rounds = layout.manifest()["objects"]["obj_a"]["rounds"].values()
    assert all(r["produced"] == 8 for r in rounds if r["status"] == "merged")
    assert any(r["accepted"] < r["produced"] for r in rounds if r["accepted"] is not None)
    assert sum(r["used"] for r in rounds if r["used"]) == 12


def test_round_failing_once_is_retried_with_same_name_and_seed(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4,
                           env={"EMULATOR_FAULTS": "t__obj_a__r0=exit"})
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    rnd = layout.manifest()["objects"]["obj_a"]["rounds"]["0"]
    assert rnd["attempts"] == 2 and rnd["status"] == "merged"
    assert rnd["failures"][0]["reason"] == "exit code 3"
    assert rnd["failures"][0]["gpu"] == 0 and rnd["gpu"] == 1  # retried on the other GPU
    started = events(logs, "round_started")
    assert [(e["round"], e["seed"]) for e in started] == [("t__obj_a__r0", 1000)] * 2
    assert events(logs, "round_retry")[0]["attempt"] == 2


def test_round_that_always_fails_gives_the_object_another_round(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4,
                           retry={"max_attempts": 2},
                           env={"EMULATOR_FAULTS": "t__obj_a__r0=exit*"})
    assert run_in_process(config) == 0
    obj = layout.manifest()["objects"]["obj_a"]
    assert obj["rounds"]["0"]["status"] == "failed" and obj["rounds"]["0"]["attempts"] == 2
    assert obj["rounds"]["1"]["status"] == "merged"
    assert set(layout.final("obj_a")["round_id"]) == {1}


@pytest.mark.parametrize("fault,reason", [
    ("crash_mid_write", "exit code 1"),
    ("nan", "invalid result: non-finite E_pen"),
    ("wrong_length", "invalid result: wrong batch length"),
    ("sigkill", "killed by signal 9"),
])
def test_bad_rounds_are_never_merged(layout: Layout, fault: str, reason: str) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4,
                           env={"EMULATOR_FAULTS": f"t__obj_a__r0={fault}"})
    assert run_in_process(config) == 0
    rnd = layout.manifest()["objects"]["obj_a"]["rounds"]["0"]
    assert rnd["failures"][0]["reason"].startswith(reason)
    assert rnd["attempts"] == 2 and rnd["status"] == "merged"
    data = layout.final("obj_a")
    assert len(data["energy"]) == 4 and np.isfinite(data["E_pen"]).all()


def test_hang_is_killed_by_the_timeout(layout: Layout) -> None:
    config = layout.config(
        object_code_list=["obj_a"], target_count_per_object=4,
        timeouts={"round_timeout_s": 1.5, "grace_s": 0.5},
        env={"EMULATOR_FAULTS": "t__obj_a__r0=hang+ignore_sigterm", "EMULATOR_ITER_S": "0.01"},
    )
    assert run_in_process(config) == 0
    rnd = layout.manifest()["objects"]["obj_a"]["rounds"]["0"]
    assert rnd["failures"][0]["reason"].startswith("timeout")
    assert rnd["failures"][0]["exit_code"] == -9  # ignored SIGTERM, got SIGKILL


def test_stalled_round_is_killed(layout: Layout) -> None:
    config = layout.config(
        object_code_list=["obj_a"], target_count_per_object=4,
        timeouts={"stall_timeout_s": 1.0, "grace_s": 0.5},
        env={"EMULATOR_FAULTS": "t__obj_a__r0=hang"},
    )
    assert run_in_process(config) == 0
    rnd = layout.manifest()["objects"]["obj_a"]["rounds"]["0"]
    assert rnd["failures"][0]["reason"].startswith("stalled")


def test_unknown_object_is_marked_failed_and_others_complete(layout: Layout) -> None:
    meshdata = layout.root / "data" / "meshdata"
    for code in ("obj_a", "obj_c"):
        (meshdata / code).mkdir(parents=True)
    config = layout.config(target_count_per_object=4, gpus=[0],
                           retry={"max_attempts": 1, "max_consecutive_failed_rounds": 2})
    with capture_logs() as logs:
        assert run_in_process(config) == 1
    m = layout.manifest()["objects"]
    assert m["obj_b"]["status"] == "failed" and len(m["obj_b"]["rounds"]) == 2
    assert "No mesh found" in " ".join(events(logs, "round_failed")[0]["tail"])
    assert m["obj_a"]["done"] and m["obj_c"]["done"]


def test_max_rounds_caps_an_object(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=20,
                           round_batch_size=4, max_rounds=2)
    assert run_in_process(config) == 1
    obj = layout.manifest()["objects"]["obj_a"]
    assert obj["status"] == "exhausted" and len(obj["rounds"]) == 2
    assert len(layout.final("obj_a")["energy"]) == 8  # nothing merged is lost


def test_gpu_short_of_memory_is_not_used_until_it_frees(layout: Layout) -> None:
    fake = FakeProbe({0: BIG, 1: 1000})
    config = layout.config(object_code_list=["obj_a", "obj_b"], target_count_per_object=8,
                           round_batch_size=4, gpus=[0, 1], gpu={"probe": "auto"})
    with capture_logs() as logs:
        # Free GPU 1 once GPU 0 has finished a round: by then GPU 1 was refused.
        from supervisor.run.merger import Merger

        original = Merger.handle

        def handle(self, message):
            original(self, message)
            if type(message).__name__ == "Outcome":
                fake.free[1] = BIG

        Merger.handle = handle
        try:
            assert run_in_process(config, fake) == 0
        finally:
            Merger.handle = original
    started = events(logs, "round_started")
    wait = events(logs, "gpu_wait")
    assert wait and "1" in wait[0]["short"]
    first_on_1 = next(i for i, e in enumerate(started) if e["gpu"] == 1)
    first_done = next(i for i, e in enumerate(logs) if e["event"] == "round_finished")
    assert logs.index(started[first_on_1]) > first_done


def test_lost_gpu_is_taken_out_and_others_go_on(layout: Layout) -> None:
    fake = FakeProbe({0: BIG, 1: BIG})
    fake.failing.add(1)
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=8,
                           gpus=[0, 1], gpu={"probe": "auto"})
    with capture_logs() as logs:
        assert run_in_process(config, fake) == 0
    assert events(logs, "gpu_lost")[0]["gpu"] == 1
    assert {e["gpu"] for e in events(logs, "round_started")} == {0}


@pytest.mark.parametrize("mode,left", [
    ("remove", set()),
    ("light", {"config.txt", "obj_a.npy"}),
])
def test_cleanup_modes(layout: Layout, mode: str, left: set[str]) -> None:
    command = layout.config_data()["main"]["command"] + ["--vis", "--vis_frame_stride", "1"]
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=8,
                           main={"command": command}, cleanup={"mode": mode})
    assert run_in_process(config) == 0
    folders = [p for p in layout.rounds.iterdir()] if layout.rounds.exists() else []
    if mode == "remove":
        assert folders == []
        return
    assert len(folders) == 2
    for folder in folders:
        assert [p.name for p in folder.iterdir()] == ["results"]
        assert {p.name for p in (folder / "results").iterdir()} == left


def test_keep_intermediate_keeps_everything(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=8,
                           keep_intermediate=True)
    assert run_in_process(config) == 0
    for folder in layout.rounds.iterdir():
        assert (folder / "logs").is_dir()


def test_merge_stride_writes_every_n_rounds_and_at_the_end(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=20,
                           round_batch_size=4, merge_stride=2, gpus=[0])
    writes: list[int] = []
    original = dataset.write

    def spy(path: Path, columns) -> None:
        writes.append(len(columns["energy"]))
        original(path, columns)

    dataset.write = spy
    try:
        assert run_in_process(config) == 0
    finally:
        dataset.write = original
    assert writes == [8, 16, 20]


def test_per_round_and_per_gpu_logs(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4, gpus=[1])
    assert run_in_process(config) == 0
    logs_dir = layout.experiments / "t" / "logs"
    round_log = (logs_dir / "rounds" / "t__obj_a__r0.log").read_text()
    assert "Experiment completed: t__obj_a__r0" in round_log
    assert re.search(r"stderr: optimizing: 100%", round_log)
    assert "t__obj_a__r0 stdout: Starting optimization" in (logs_dir / "gpu_1.log").read_text()


def test_round_progress_events(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4,
                           num_iterations=20, logs={"progress_interval_s": 3600.0})
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    progress = events(logs, "round_progress")
    assert [e["step"] for e in progress] == [0, 20]  # rate-limited: the first and the end
    assert progress and progress[-1]["step"] == progress[-1]["total"] == 20
    assert sum(e["step"] == 20 for e in progress) == 1  # the final redraw is not repeated
    assert all(e["round"] == "t__obj_a__r0" for e in progress)


def test_seed_plan_formula_matches_manifest(layout: Layout) -> None:
    config = layout.config(seed_base=7, target_count_per_object=4)
    assert run_in_process(config) == 0
    for obj in layout.manifest()["objects"].values():
        for rid, rnd in obj["rounds"].items():
            assert rnd["seed"] == plan.round_seed(7, obj["index"], int(rid))


def test_inherited_cuda_visible_devices_with_all_gpus_is_warned(layout: Layout,
                                                                 monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4, gpus="all",
                           gpu={"probe": "auto"})
    with capture_logs() as logs:
        assert run_in_process(config, FakeProbe({0: BIG, 1: BIG})) == 0
    assert events(logs, "gpu_env")[0]["cuda_visible_devices"] == "2,3"


def test_a_sigkill_is_called_an_oom_kill_only_when_the_kernel_log_says_so(
        layout: Layout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The round log said "(the OOM killer sends it)" for every SIGKILL: a guess."""
    from supervisor.backends.runner import ChildExit
    from supervisor.run import endings

    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4,
                           env={"EMULATOR_FAULTS": "t__obj_a__r0=sigkill"})
    monkeypatch.setattr(endings, "KMSG", str(tmp_path / "no-kmsg"))
    assert run_in_process(config) == 0
    reason = layout.manifest()["objects"]["obj_a"]["rounds"]["0"]["failures"][0]["reason"]
    assert reason.startswith("killed by signal 9, SIGKILL (for example by the OOM killer")
    # The launcher names the pid that died; the kernel log may name it too.
    log = (layout.experiments / "t/logs/rounds/t__obj_a__r0.log").read_text()
    pid = int(re.search(r"supervisor\.launch: pid (\d+) ended by signal 9", log).group(1))
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(f"6,1,2,-;unrelated\n3,7,8,-;Out of memory: Killed process {pid} "
                    f"(python) total-vm:1000kB\n")
    monkeypatch.setattr(endings, "KMSG", str(kmsg))
    exit_ = ChildExit(1, -9, None)
    tail = [f"supervisor.launch: pid {pid} ended by signal 9"]
    assert "by the kernel's OOM killer (kernel log: Out of memory: Killed process" in \
        endings.describe(exit_, config, tail)
    assert "for example" in endings.describe(exit_, config, tail, local=False)
    other = [f"supervisor.launch: pid {pid + 1} ended by signal 9"]
    assert "for example" in endings.describe(exit_, config, other)
