"""[dedup] through whole runs: near-duplicates removed at merge, the earliest kept,
exact quotas, the same final.npz on 1 GPU or 3 and after an interruption."""

from __future__ import annotations

import numpy as np

from conftest import Layout, run_in_process
from supervisor.dataset import dedup, results
from supervisor.storage import paths
from supervisor.config.schema import DedupSettings

NEAR = {"EMULATOR_NEAR_DUPLICATES": "0.5"}  # half of each round copies 8 fixed grasps
DEDUP = {"enabled": True}


def run(layout: Layout, exp: str, gpus: list[int], **extra) -> dict:
    config = layout.config(exp_name=exp, gpus=gpus, object_code_list=["obj_a", "obj_b"],
                           target_count_per_object=20, round_batch_size=8, env=NEAR,
                           dedup=DEDUP, **extra)
    assert run_in_process(config) == 0
    return {code: layout.final(code, exp) for code in ("obj_a", "obj_b")}


def test_near_duplicates_are_removed_the_earliest_kept_quotas_exact(layout: Layout) -> None:
    finals = run(layout, "one", [0], keep_intermediate=True)
    settings = DedupSettings(enabled=True)
    manifest = layout.manifest("one")
    removed = 0
    for code, data in finals.items():
        # Independently: every round's result in round order, near-duplicates of any
        # earlier grasp dropped, the first 20 kept.
        rounds = manifest["objects"][code]["rounds"]
        parts = []
        for rid in sorted(rounds, key=int):
            name = rounds[rid]["name"]
            cols = results.read_round(layout.rounds / name / "results" / f"{code}.npy", 8)
            parts.append(results.with_provenance(cols, rounds[rid]["seed"], int(rid)))
        every = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        keep = dedup.dedup_mask(every, settings)
        removed += int((~keep).sum())
        for key, column in data.items():
            if key != "qpos_names":
                np.testing.assert_array_equal(column, every[key][keep][:20], err_msg=key)
    assert removed > 0
    assert sum(r["accepted"] - r["unique"] for o in manifest["objects"].values()
               for r in o["rounds"].values() if r["unique"] is not None) > 0


def test_same_arrays_on_one_or_three_gpus_with_dedup(layout: Layout) -> None:
    one, three = run(layout, "one", [0]), run(layout, "three", [0, 1, 2])
    for code in one:
        for key in one[code]:
            np.testing.assert_array_equal(one[code][key], three[code][key])


def test_resume_after_drain_judges_rounds_again_in_order(layout: Layout) -> None:
    reference = run(layout, "ref", [0, 1])
    # A tiny merge_stride writes final.npz often; then make the run stop half way by
    # deleting what a drain would have left: resume reloads rounds from their folders.
    config = layout.config(exp_name="cut", gpus=[0, 1], object_code_list=["obj_a", "obj_b"],
                           target_count_per_object=10, round_batch_size=8, env=NEAR,
                           dedup=DEDUP, keep_intermediate=True)
    assert run_in_process(config) == 0
    raised = layout.config(exp_name="cut", gpus=[0, 1], object_code_list=["obj_a", "obj_b"],
                           target_count_per_object=20, round_batch_size=8, env=NEAR,
                           dedup=DEDUP, keep_intermediate=True)
    assert run_in_process(raised) == 0
    for code in reference:
        cut = layout.final(code, "cut")
        for key in reference[code]:
            np.testing.assert_array_equal(reference[code][key], cut[key])
    assert paths.journal(layout.experiments / "cut").exists()


def test_changing_dedup_on_resume_is_refused(layout: Layout) -> None:
    from conftest import run_cli

    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4,
                               dedup=DEDUP)
    assert run_cli(str(path)).returncode == 0
    changed = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4,
                                  dedup={"enabled": True, "joint_tol_rad": 0.2})
    proc = run_cli(str(changed))
    assert proc.returncode == 2 and "dedup" in proc.stderr


def test_a_run_resumed_after_merged_rounds_keeps_its_deduped_rows(layout: Layout) -> None:
    """Found by a tester: after a kill -9, resume read merged rounds again from their
    folders (accepted, not deduped) and replaced delivered rows with duplicates."""
    common = dict(object_code_list=["obj_a"], target_count_per_object=20,
                  round_batch_size=8, env=NEAR, dedup=DEDUP, gpus=[0])
    assert run_in_process(layout.config(exp_name="ref", **common)) == 0
    # Stopped after 2 rounds (exhausted): rounds merged with duplicates removed, their
    # folders kept; the rerun with room for more rounds revives the object.
    assert run_in_process(layout.config(exp_name="cut", max_rounds=2, **common)) == 1
    cut = layout.manifest("cut")["objects"]["obj_a"]["rounds"]
    assert any(r["unique"] < r["accepted"] for r in cut.values())
    assert run_in_process(layout.config(exp_name="cut", max_rounds=50, **common)) == 0
    reference, resumed = layout.final("obj_a", "ref"), layout.final("obj_a", "cut")
    for key in reference:
        np.testing.assert_array_equal(reference[key], resumed[key], err_msg=key)
    assert dedup.dedup_mask(resumed, DedupSettings(enabled=True)).all()


def test_quota_met_on_the_last_allowed_round_exits_0_with_exactly_the_target(
        layout: Layout) -> None:
    """Found by a new user (max_rounds reached by the round that met the quota): exit 1,
    "exhausted", and a final.npz with more rows than the target."""
    from structlog.testing import capture_logs

    config = layout.config(object_code_list=["obj_a"], target_count_per_object=10,
                           round_batch_size=4, max_rounds=3, dedup=DEDUP, gpus=[0],
                           keep_intermediate=True)
    with capture_logs() as logs:
        assert run_in_process(config) == 0
    assert not [e for e in logs if e["event"] == "object_failed"]
    summary = [e for e in logs if e["event"] == "run_finished"][0]
    assert summary["objects_done"] == 1 and summary["grasps"] == 10
    data = layout.final("obj_a")
    assert len(data["energy"]) == 10
    assert data["round_id"].tolist() == [0] * 4 + [1] * 4 + [2] * 2
    assert data["item_index"].tolist() == [0, 1, 2, 3] * 2 + [0, 1]
    obj = layout.manifest()["objects"]["obj_a"]
    assert obj["status"] == "done" and obj["collected"] == 10


def test_a_round_that_keeps_no_grasp_does_not_cut_the_rounds_after_it(layout: Layout) -> None:
    """Found by a tester: a stride or drain write stopped at the first round whose grasps
    the filter all rejected, so an exhausted object's final.npz held 12 of 55 grasps."""
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=200,
                           round_batch_size=4, max_rounds=12, gpus=[0],
                           filter={"max_E_pen": 0.0003})
    assert run_in_process(config) == 1  # exhausted
    rounds = layout.manifest()["objects"]["obj_a"]["rounds"].values()
    accepted = [r["accepted"] for r in rounds]
    assert 0 in accepted[:-1] and sum(accepted) > 0  # a round kept none, later ones some
    assert len(layout.final("obj_a")["energy"]) == sum(accepted)
    assert {r["status"] for r in rounds} == {"merged"}
