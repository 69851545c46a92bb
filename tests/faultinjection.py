"""Kill the supervisor anywhere, resume, check: shared by the test suite and bench/.

A seeded schedule picks, for each kill, either the k-th line the supervisor prints
(timing-driven: mid-round, mid-merge) or a crash point inside the write path
(SUPERVISOR_CRASH_AT: before/after the rename of a temp file, between the manifest and the
datasets, before cleanup). After every kill the manifest and every final.npz must load and
no child of the killed run may survive; at the end each object must hold exactly its
quota, without duplicates, equal to an uninterrupted run.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from conftest import live_emulators
from supervisor.dataset import final as dataset
from supervisor.storage import manifest as mf, paths
from supervisor.storage.faults import CRASH_POINTS

CODES = ("obj_a", "obj_b", "obj_c")
SETTINGS = dict(object_code_list=list(CODES), target_count_per_object=14, round_batch_size=4,
                num_iterations=20, merge_stride=2, filter={"max_E_pen": 0.002})
# The same with near-duplicate removal on and rounds that hold near-duplicates.
DEDUP_SETTINGS = dict(SETTINGS, dedup={"enabled": True},
                      env={"EMULATOR_NEAR_DUPLICATES": "0.5"})


@dataclass
class Report:
    kills: Counter = field(default_factory=Counter)
    experiments: int = 0
    grasps_checked: int = 0
    resumes: int = 0
    wall_s: float = 0.0


def _check_state(layout, exp: str) -> None:
    path = layout.experiments / exp / "manifest.json"
    if path.exists():
        from supervisor.storage import journal
        from supervisor.core.state import Policy
        mf.load(path, Policy(exp))
        list(journal.read(paths.journal(layout.experiments / exp), 0))
    for code in CODES:
        final = paths.final(layout.experiments / exp, code)
        if final.exists():
            dataset.load(final)
    deadline = time.monotonic() + 10
    while live_emulators(exp):
        assert time.monotonic() < deadline, f"children of {exp} survived the kill"
        time.sleep(0.01)


def _one_life(config: Path, env: dict, rng: random.Random, report: Report) -> int | None:
    """Run the supervisor once under a randomly chosen fault; its exit code, or None if
    we killed it."""
    env = dict(env)
    point = None
    if rng.random() < 0.5:
        point = rng.choice(CRASH_POINTS)
        env["SUPERVISOR_CRASH_AT"] = f"{point}:{rng.randint(1, 6)}"
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", str(config)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    line_limit = None if point else rng.randint(1, 60)
    for n, line in enumerate(proc.stdout, 1):
        json.loads(line)  # every line is JSON, even right before a kill
        if line_limit is not None and n >= line_limit:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    code = proc.wait(timeout=120)
    if code == -signal.SIGKILL:
        report.kills[point or "after a log line"] += 1
        return None
    return code


def kill_anywhere(layout, kills: int, seed: int, env: dict,
                  settings: dict | None = None) -> Report:
    """Keep killing fresh experiments until ``kills`` kills happened; verify each."""
    from conftest import run_in_process

    chosen = settings or SETTINGS
    rng, report, start = random.Random(seed), Report(), time.monotonic()
    assert run_in_process(layout.config(exp_name="reference", **chosen)) == 0
    reference = {c: layout.final(c, "reference") for c in CODES}
    while sum(report.kills.values()) < kills:
        exp = f"kill{report.experiments}"
        report.experiments += 1
        config = layout.write_config(name=f"{exp}.toml", exp_name=exp, **chosen)
        while True:
            code = _one_life(config, env, rng, report)
            _check_state(layout, exp)
            if code is not None:
                assert code == 0, f"{exp}: supervisor exited {code}"
                break
            report.resumes += 1
        for c in CODES:
            data = layout.final(c, exp)
            pairs = set(zip(data["round_id"].tolist(), data["item_index"].tolist()))
            assert len(data["energy"]) == len(pairs) == chosen["target_count_per_object"]
            for key in reference[c]:
                np.testing.assert_array_equal(data[key], reference[c][key], err_msg=key)
            report.grasps_checked += len(pairs)
    report.wall_s = time.monotonic() - start
    return report
