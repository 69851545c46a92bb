"""What the supervisor itself costs: dataset and manifest writes, and per-round overhead.

    python bench/overhead.py

Figures, not assertions: run it before and after a change to the scheduling, merge or
I/O path and compare on the same machine.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from conftest import Layout, cli_env, run_in_process  # noqa: E402
from supervisor import dataset, manifest as mf  # noqa: E402
from supervisor.emulator import make_grasps  # noqa: E402
from supervisor.results import to_columns, with_provenance  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def dataset_costs(tmp: Path) -> None:
    items = np.empty(2048, dtype=object)
    items[:] = make_grasps("o", 1, 2048, 10000)
    start = time.perf_counter()
    cols = with_provenance(to_columns(items, 2048), 1, 0)
    took = time.perf_counter() - start
    print(f"validate + columns, one 2048-grasp round: {1000 * took:.1f} ms")
    for n in (2048, 10_000, 30_000):
        reps = -(-n // 2048)
        big = {k: np.concatenate([v] * reps)[:n] for k, v in cols.items()}
        big["round_id"] = np.repeat(np.arange(reps), 2048)[:n]  # distinct rounds, in order
        path = tmp / f"final_{n}.npz"
        write = best_of(lambda p=path, b=big: dataset.write(p, b))
        load = best_of(lambda p=path: dataset.load(p))
        print(f"final.npz with {n:>6} grasps: write {1000 * write:7.1f} ms, load+check "
              f"{1000 * load:6.1f} ms, {path.stat().st_size / 2**20:.1f} MiB")


def manifest_costs(tmp: Path) -> None:
    m = mf.Manifest("bench", {}, {})
    for i in range(1000):
        obj = m.objects[f"object_{i:04d}"] = mf.ObjectRecord(f"object_{i:04d}", i, 30000)
        for rid in range(30):
            obj.rounds[rid] = mf.RoundRecord(rid, f"bench__object_{i:04d}__r{rid}", rid,
                                             status=mf.MERGED, produced=2048, accepted=1500,
                                             started_at=1.0, finished_at=2.0, gpu=rid % 8)
    path = tmp / "manifest.json"
    cold = best_of(m.dumps, repeat=1)  # first write of a run: every object encoded

    def one_event() -> None:  # what the merger does per event: one object changed
        m.touch("object_0500")
        mf.save(path, m.dumps())

    warm = best_of(one_event)
    print(f"manifest, 1000 objects x 30 rounds ({path.stat().st_size / 2**20:.1f} MiB): "
          f"first serialisation {1000 * cold:.0f} ms; per event (one object changed), "
          f"serialise + atomic write {1000 * warm:.0f} ms")


def round_overhead(tmp: Path, rounds: int = 24) -> None:
    layout = Layout(tmp / "rounds")
    env = {"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0"}
    args = ["--batch_size", "4", "--num_iterations", "0", "--seed", "1", "--gpu", "0",
            "--jitter_strength", "0.1"]
    full_env = {**cli_env(), **env}
    start = time.perf_counter()
    for i in range(rounds // 2):  # two at a time, like two GPUs
        procs = [subprocess.Popen([sys.executable, "-m", "supervisor.emulator", "--name",
                                   f"direct{i}_{j}", "--object_code", "o", *args],
                                  cwd=layout.cwd, env=full_env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for j in range(2)]
        for p in procs:
            p.wait()
    direct = time.perf_counter() - start
    codes = [f"o{i:02d}" for i in range(rounds)]
    config = layout.config(object_code_list=codes, target_count_per_object=4,
                           round_batch_size=4, num_iterations=0, env=env, gpus=[0, 1])
    start = time.perf_counter()
    assert run_in_process(config) == 0
    supervised = time.perf_counter() - start
    print(f"{rounds} rounds of the emulator on 2 slots: {direct:.2f} s launched directly, "
          f"{supervised:.2f} s under the supervisor "
          f"({1000 * (supervised - direct) / rounds:+.0f} ms per round)")


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        dataset_costs(Path(tmp))
        manifest_costs(Path(tmp))
        round_overhead(Path(tmp))


if __name__ == "__main__":
    main()
