"""Packing and out-of-memory through whole runs, on the emulator's shared cards
(supervisor.emulator.cards, read by the "emulator" probe): the level a card finds, the
events and figures it leaves, a resumed run that starts there, out-of-memory storms that
cost nothing, and datasets that do not depend on any of it."""

from __future__ import annotations

import numpy as np
from structlog.testing import capture_logs

from conftest import Layout, run_in_process

CODES = ["obj_a", "obj_b"]


def cards(layout: Layout, curve: str, card_mib: int = 80_000, round_mib: int = 6_000,
          **gpu) -> dict:
    """A config whose rounds share emulated cards."""
    env = {"EMULATOR_GPU_DIR": str(layout.root / "cards"), "EMULATOR_GPU_CURVE": curve,
           "EMULATOR_GPU_MEMORY_MIB": str(card_mib), "EMULATOR_ROUND_MEMORY_MIB": str(round_mib),
           "EMULATOR_ITER_S": "0.01", "EMULATOR_MEMORY_DELAY_S": "0.05"}
    return dict(object_code_list=CODES, round_batch_size=4, num_iterations=120, gpus=[0],
                env=env, main={"threads": 1},
                gpu={"probe": "emulator", "poll_interval_s": 0.05, "min_free_mib": 500,
                     "round_memory_mib": round_mib, "max_rounds_per_gpu": "auto",
                     "pack_window_s": 0.6, "pack_retest_s": 600.0, **gpu})


def run(config) -> int:
    """In this process, the probe reading the emulated cards as NVML would."""
    from supervisor.gpus.choose import make_probe

    probe, _ = make_probe(config.gpu.probe, config.gpus, config.main.env)
    return run_in_process(config, probe)


def events(logs: list[dict], name: str) -> list[dict]:
    return [e for e in logs if e["event"] == name]


def same(layout: Layout, a: str, b: str, codes=CODES) -> None:
    for code in codes:
        x, y = layout.final(code, a), layout.final(code, b)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=f"{code} {key}")


def test_auto_finds_the_peak_resumes_there_and_never_changes_the_dataset(
        layout: Layout) -> None:
    """The curve falls after two rounds at once (the policy's whole path is in
    tests/test_packing.py; here: the loop through real children and the files)."""
    settings = cards(layout, "1,1.8,1.1,0.9")
    with capture_logs() as logs:
        assert run(layout.config(target_count_per_object=40, **settings)) == 0
    changes = events(logs, "packing_changed")
    assert (changes[0]["from"], changes[0]["to"]) == (1, 2), changes
    assert all(set(c) >= {"gpu", "from", "to", "why", "gains", "grasps_per_s"}
               for c in changes)
    gpu = layout.manifest()["gpus"]["0"]
    # The curve's 1.8 with both iterating, measured (real children); in wall time less,
    # since these rounds spend a large part of their life starting, but more than one.
    assert 1.4 < gpu["sharing"]["2"] < 2.2, gpu
    assert gpu["gains"]["1"] < gpu["gains"]["2"] < gpu["sharing"]["2"], gpu
    # Which level wins in wall time is measured, not read off the curve: these rounds
    # spend a large part of their life starting, and more places hide that (three at once
    # measured up to 1.32 where two measured 1.10-1.14, in 3 runs of 8), and a level's
    # figure moves by 10 % from one window to the next. So: at least two, and every step
    # back was to a level measured better than the one left.
    assert gpu["level"] >= 2, gpu
    assert all("less than" in c["why"] for c in changes if c["to"] < c["from"]), changes
    # Resumed with a higher target: it starts where it left off, not at one round.
    with capture_logs() as logs:
        assert run(layout.config(target_count_per_object=48, **settings)) == 0
    level = layout.manifest()["gpus"]["0"]["level"]
    assert not [c for c in events(logs, "packing_changed") if c["from"] == 1]
    assert level >= 2
    # One round per card (on four cards) gives the same arrays (obj_a: index 0 both ways).
    fixed = {**settings, "gpus": [0, 1, 2, 3], "object_code_list": ["obj_a"],
             "gpu": {**settings["gpu"], "max_rounds_per_gpu": 1}}
    assert run(layout.config(exp_name="one", target_count_per_object=48, **fixed)) == 0
    same(layout, "t", "one", ["obj_a"])


def test_an_out_of_memory_storm_costs_no_attempt_and_quarantines_no_card(
        layout: Layout) -> None:
    """The estimate is far below the real footprint, so the first rounds all start at
    once and most run out of memory; one attempt per round and one failure quarantines."""
    settings = cards(layout, "1,1.5,1.8", card_mib=14_000, round_mib=6_000,
                     round_memory_mib=500, max_rounds_per_gpu=4, quarantine_after=1)
    settings["gpus"] = [0, 1]
    config = layout.config(target_count_per_object=16, retry={"max_attempts": 1},
                           **settings)
    with capture_logs() as logs:
        assert run(config) == 0
    assert len(events(logs, "round_out_of_memory")) >= 2
    assert not events(logs, "round_failed") and not events(logs, "gpu_quarantined")
    rounds = [r for o in layout.manifest()["objects"].values() for r in o["rounds"].values()]
    assert {r["status"] for r in rounds} <= {"merged", "discarded"}
    assert any(f["kind"] == "oom" for r in rounds for f in r["failures"])
    assert all(r["attempts"] == 1 for r in rounds if r["status"] == "merged")
    fixed = cards(layout, "1,1.5,1.8", max_rounds_per_gpu=1)
    fixed.update(gpus=[0, 1, 2, 3], object_code_list=["obj_a"])
    assert run(layout.config(exp_name="one", target_count_per_object=16, **fixed)) == 0
    same(layout, "t", "one", ["obj_a"])


def test_a_batch_that_fits_no_card_stops_the_run_with_one_clear_error(layout: Layout) -> None:
    settings = cards(layout, "1", card_mib=4_000, round_mib=6_000, round_memory_mib=3_000,
                     max_rounds_per_gpu=1)
    with capture_logs() as logs:
        assert run(layout.config(target_count_per_object=8,
                                            retry={"max_attempts": 2}, **settings)) == 1
    stopped = events(logs, "run_stopped")
    assert stopped and "round_batch_size = 4 does not fit" in stopped[0]["reason"]
    assert "4000 MiB free" in stopped[0]["reason"]
    assert len(events(logs, "round_out_of_memory")) == 0  # each was a real failure
    assert len(events(logs, "round_failed")) == 2


def test_cards_too_small_for_one_round_stop_the_run_with_one_clear_error(
        layout: Layout) -> None:
    """Found by trying it: with round_memory_mib above every card's size the run waited
    for ever, saying only that memory was short."""
    settings = cards(layout, "1", card_mib=4_000, round_mib=3_000, round_memory_mib=5_000)
    with capture_logs() as logs:
        assert run(layout.config(target_count_per_object=8, **settings)) == 1
    stopped = events(logs, "run_stopped")
    assert len(stopped) == 1, stopped
    assert stopped[0]["reason"].startswith("no GPU can take one round: GPU 0 has 4000 MiB "
                                           "in all, and a round needs 5000 MiB free "
                                           "([gpu] round_memory_mib = 5000"), stopped
    assert "lower [gpu] round_memory_mib" in stopped[0]["reason"]
    assert [e["gpu"] for e in events(logs, "gpu_too_small")] == [0]
    assert not events(logs, "round_started")
    # Fixed: the same experiment runs on (sampled often: these rounds last a second).
    settings["gpu"].update(round_memory_mib=3_000, sample_interval_s=0.1)
    assert run(layout.config(target_count_per_object=8, **settings)) == 0
    learned = layout.manifest()["gpus"]["0"]["footprint_mib"]
    assert 3_000 <= learned < 4_000
    # A resumed run admits by what rounds were seen to take (found by a tester: it went
    # back to round_memory_mib, and stopped again).
    settings["gpu"]["round_memory_mib"] = 5_000
    assert run(layout.config(target_count_per_object=16, **settings)) == 0
    assert layout.manifest()["gpus"]["0"]["footprint_mib"] >= learned


def test_another_users_job_on_a_card_sends_the_work_elsewhere_not_round_and_round(
        layout: Layout) -> None:
    """Found by a tester: with a fixed level, another user's job holding a card's memory
    made the same round run out of memory there again and again, for ever, while the
    other card stood idle. And with round_memory_mib too low, those OOMs were called the
    batch's fault ("lower round_batch_size") and charged to the object."""
    settings = cards(layout, "1", card_mib=40_000, round_mib=6_000, max_rounds_per_gpu=1,
                     round_memory_mib=1_000)
    settings["gpus"] = [0, 1]
    gpu0 = layout.root / "cards" / "gpu0"
    gpu0.mkdir(parents=True)
    (gpu0 / "foreign-big.json").write_text('{"mib": 36000, "load": 0}')
    config = layout.config(target_count_per_object=12, **settings)
    with capture_logs() as logs:
        assert run(config) == 0
    ooms = events(logs, "round_out_of_memory")
    assert 1 <= len(ooms) <= 2 and all(e["gpu"] == 0 for e in ooms)
    assert not events(logs, "round_failed") and not events(logs, "run_stopped")
    started = events(logs, "round_started")
    assert sum(e["gpu"] == 0 for e in started) <= 2  # the card waits for its memory


def _foreign(layout: Layout, gpu: int, mib: int) -> None:
    card = layout.root / "cards" / f"gpu{gpu}"
    card.mkdir(parents=True, exist_ok=True)
    (card / "foreign-job.json").write_text(f'{{"mib": {mib}, "load": 0}}')


def test_a_retry_never_waits_for_a_card_another_users_job_fills(layout: Layout) -> None:
    """Found by a tester: a round that ran out of memory on GPU 1 had to go to GPU 0, the
    other healthy card it had not failed on, though another user's job held GPU 0's
    memory: the run waited for ever, saying nothing. Both rounds start on GPU 1 (the
    estimate is below what they take), one runs out of memory; its retry must go back to
    GPU 1 once that card admits rounds again."""
    settings = cards(layout, "1", card_mib=40_000, round_mib=6_000, round_memory_mib=5_000,
                     max_rounds_per_gpu=2)
    settings["gpus"] = [0, 1]
    settings["object_code_list"] = ["obj_a"]
    settings["env"]["EMULATOR_MEMORY_DELAY_S"] = "0.4"  # both have started by then
    _foreign(layout, 0, 36_000)  # 4000 free: never a round
    _foreign(layout, 1, 30_000)  # 10000 free: one round at a time
    with capture_logs() as logs:
        assert run_in_process_limited(layout.config(target_count_per_object=8, **settings)) == 0
    ooms = events(logs, "round_out_of_memory")
    assert [e["gpu"] for e in ooms] == [1], ooms
    assert all(e["gpu"] == 1 for e in events(logs, "round_started"))
    assert not events(logs, "run_stopped")
    # While it waits for GPU 1's memory, the log says so (not only once at the start).
    after = logs[logs.index(ooms[0]):]
    assert [e for e in after if e["event"] == "gpu_wait" and "1" in e["short"]], after


def test_a_fixed_level_admits_by_the_footprint_rounds_were_seen_to_take(
        layout: Layout) -> None:
    """Found by a tester: cards of 9000 MiB, max_rounds_per_gpu = 2, round_memory_mib =
    2000, another user's 4000 MiB on one card. A second round was admitted beside one that
    NVML showed at 6014 MiB (2986 free, above min_free_mib): 21 out-of-memory errors in
    75 s, then a hang. Rounds here take 6000 MiB: once that is seen, one at a time."""
    settings = cards(layout, "1", card_mib=9_000, round_mib=6_000, round_memory_mib=2_000,
                     max_rounds_per_gpu=2, sample_interval_s=0.05)
    settings["gpus"] = [0, 1]
    settings["object_code_list"] = ["obj_a"]
    _foreign(layout, 0, 4_000)
    with capture_logs() as logs:
        assert run_in_process_limited(layout.config(target_count_per_object=24,
                                                    **settings)) == 0
    ooms = events(logs, "round_out_of_memory")
    # the first rounds, before any round was seen whole, may run out; none after that
    first_ok = min(i for i, e in enumerate(logs) if e["event"] == "round_finished")
    assert not [e for e in logs[first_ok:] if e["event"] == "round_out_of_memory"], ooms
    assert layout.manifest()["gpus"]["1"]["footprint_mib"] >= 6_000


def run_in_process_limited(config) -> int:
    """A hang fails the test in half a minute, not two."""
    from supervisor.gpus.choose import make_probe

    probe, _ = make_probe(config.gpu.probe, config.gpus, config.main.env)
    return run_in_process(config, probe, timeout_s=40.0)
