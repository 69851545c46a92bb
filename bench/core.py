"""Figures for the core (printed, not asserted): python bench/core.py

On a synthetic 2,000-object x 30-round experiment: persistence per event (time on the
event loop, bytes written), start-up (snapshot + replay of 60,000 journal events), merge
of a 2,048-grasp round with 0 and 30,000 grasps already held, bytes written per
30,000-grasp object over its run, the live view's tick. With emulator children and fake
GPUs: GPU health (4 GPUs, one failing every round) and launch latency (a child's exit to
the next child's fork on that GPU, from /proc start times).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import EMULATOR_COMMAND, Layout, run_in_process  # noqa: E402
from supervisor.dataset import final as dataset
from supervisor.core import events as ev
from supervisor.storage import journal, manifest as mf, store as st  # noqa: E402
from supervisor.dataset.final import Accumulator  # noqa: E402
from supervisor.emulator.grasps import make_grasps  # noqa: E402
from supervisor.run.live import LiveView  # noqa: E402
from supervisor.dataset.results import read_accepted  # noqa: E402
from supervisor.core.state import Policy, State  # noqa: E402
from supervisor.core.transitions import apply  # noqa: E402

OBJECTS, ROUNDS, BATCH = 2000, 30, 2048


def synthetic(objects: int = OBJECTS, rounds: int = ROUNDS) -> tuple[State, list[ev.Event]]:
    """A state with every object registered, and the events of its whole run."""
    state = State(Policy("bench", batch_size=BATCH, max_rounds=1000), {}, {}, 0.0)
    codes = tuple(f"object_{i:04d}" for i in range(objects))
    apply(state, ev.ObjectsRegistered(codes, rounds * 1500))
    apply(state, ev.SupervisorStarted(1, "h", (), 0.0, gpus=tuple(range(8))))
    events: list[ev.Event] = []
    t = 1.0
    for code in codes:
        for rid in range(rounds):
            gpu = rid % 8
            events += [ev.RoundStarted(code, rid, gpu, t),
                       ev.RoundSpawned(code, rid, 4000 + rid, 7),
                       ev.RoundProduced(code, rid, BATCH, 1500, t + 600, 600.0)]
            t += 1
    return state, events


def persistence_per_event(tmp: Path) -> None:
    state, events = synthetic()
    for event in events[: len(events) // 2]:  # half way through the experiment
        apply(state, event)
    config = SimpleNamespace(exp_dir=tmp / "exp")
    store = st.Store(config, state)  # type: ignore[arg-type]
    store.encode_snapshot()
    rest = events[len(events) // 2:][:3000]
    times, sizes = [], []
    for event in rest:
        t0 = time.perf_counter()
        store.record(event)
        times.append(time.perf_counter() - t0)
        sizes.append(len(store.queued[-1]))
        if len(store.queued) >= 8:  # group commit, in a worker thread in the merger
            store.journal.append(store.take_queued())
    print(f"persistence per event (2,000 x 30 experiment, half done): median "
          f"{statistics.median(times) * 1e3:.3f} ms on the event loop, p99 "
          f"{np.percentile(times, 99) * 1e3:.3f} ms; {statistics.median(sizes):.0f} B "
          f"journaled (max {max(sizes)} B)")
    t0 = time.perf_counter()
    data = store.encode_snapshot()
    print(f"snapshot (every {st.SNAPSHOT_EVERY_EVENTS} events or {st.SNAPSHOT_EVERY_S:.0f} s): "
          f"{len(data) / 2**20:.1f} MiB, encoded in {(time.perf_counter() - t0) * 1e3:.0f} ms "
          f"after {len(rest)} events (only changed objects are encoded again)")


def startup(tmp: Path) -> None:
    state, events = synthetic()
    exp = tmp / "start"
    exp.mkdir()
    cut = len(events) - 60_000
    for event in events[:cut]:
        apply(state, event)
    state.seq = cut
    mf.save(exp / "manifest.json", mf.Encoder().dumps(state))
    j = journal.Journal(exp / "journal.jsonl")
    j.append([ev.encode(cut + i + 1, e) for i, e in enumerate(events[cut:])])
    config = SimpleNamespace(exp_dir=exp, object_codes=tuple(state.order), snapshot=lambda: {
        "exp_name": "bench", "round_batch_size": BATCH, "max_rounds": 1000})
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        loaded = st.load_state(config)  # type: ignore[arg-type]
        runs.append(time.perf_counter() - t0)
        assert loaded.seq == len(events)
        del loaded
    took = statistics.median(runs)
    print(f"start-up: snapshot ({(exp / 'manifest.json').stat().st_size / 2**20:.1f} MiB) + "
          f"replay of 60,000 journal events: {took:.2f} s (median of 3)")


def round_file(tmp: Path, seed: int) -> Path:
    grasps = make_grasps("obj", seed, BATCH, 100)
    arr = np.empty(len(grasps), dtype=object)
    arr[:] = grasps
    path = tmp / f"r{seed}.npy"
    np.save(path, arr, allow_pickle=True)
    return path


def merge(tmp: Path) -> None:
    path = round_file(tmp, 1)
    thresholds = {"E_pen": 0.0015}
    for held in (0, 30_000):
        acc = Accumulator()
        rid = 0
        while sum(len(c["energy"]) for c in acc.rounds.values()) < held:
            _, cols = read_accepted(path, BATCH, thresholds, 1, rid)
            acc.add(rid, cols)
            rid += 1
        times = []
        for i in range(5):
            t0 = time.perf_counter()
            produced, cols = read_accepted(path, BATCH, thresholds, 1, rid + i)
            acc.add(rid + i, cols)
            times.append(time.perf_counter() - t0)
        print(f"merge of a 2,048-grasp round (read, validate, filter, hold) with {held:,} "
              f"grasps held: median {statistics.median(times) * 1e3:.0f} ms (worker thread)")


def bytes_per_object(tmp: Path) -> None:
    """A 30,000-grasp object, 2,048-grasp rounds, default merge_stride "auto"."""
    state = State(Policy("b", batch_size=BATCH), {}, {}, 0.0)
    apply(state, ev.ObjectsRegistered(("obj",), 30_000))
    apply(state, ev.SupervisorStarted(1, "h", (), 0.0, gpus=(0,)))
    path = round_file(tmp, 2)
    acc = Accumulator()
    written = journal_bytes = 0
    rid = 0
    final = tmp / "final.npz"
    while state.objects["obj"].status == "active":
        _, cols = read_accepted(path, BATCH, {"E_pen": 0.0015}, 2, rid)
        acc.add(rid, cols)
        effects = apply(state, ev.RoundStarted("obj", rid, 0, 0.0))
        effects += apply(state, ev.RoundProduced("obj", rid, BATCH, len(cols["energy"]), 0.0, 1.0))
        journal_bytes += 3 * 250
        for effect in effects:
            if type(effect).__name__ == "WriteDataset":
                columns = acc.build(effect.used)
                dataset.write(final, columns)
                written += final.stat().st_size
                used = effect.used or {r: len(c["energy"]) for r, c in acc.rounds.items()}
                apply(state, ev.DatasetWritten("obj", used, len(columns["energy"]), 0, 0))
        rid += 1
    size = final.stat().st_size
    print(f"bytes written per 30,000-grasp object ({rid} rounds, merge_stride auto): "
          f"{written / 2**20:.1f} MiB of final.npz writes + {journal_bytes / 1024:.0f} KiB "
          f"journal for a {size / 2**20:.1f} MiB final.npz: "
          f"{(written + journal_bytes) / size:.2f}x")


def live_tick() -> None:
    state, events = synthetic()
    for event in events[: len(events) // 2]:
        apply(state, event)
    dispatcher = SimpleNamespace(draining=SimpleNamespace(is_set=lambda: False))
    sup = SimpleNamespace(state=state, config=SimpleNamespace(exp_name="bench"),
                          dispatcher=dispatcher, pool=SimpleNamespace(gpus=list(range(8))),
                          watch={})
    from supervisor.run.supervisor import Supervisor

    view = LiveView(lambda: Supervisor.snapshot(sup), open(os.devnull, "w"))  # type: ignore
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        view.render()
        times.append(time.perf_counter() - t0)
    print(f"live view tick at 2,000 x 30: median {statistics.median(times) * 1e3:.3f} ms")


BAD_GPU_1 = [
    "{python}", "-c",
    "import os, sys; sys.exit(1) if sys.argv[1] == '1' else os.execv(sys.executable, "
    "[sys.executable, '-m', 'supervisor.emulator'] + sys.argv[2:])", "{gpu}",
    *EMULATOR_COMMAND[3:],
]


def gpu_health(tmp: Path) -> None:
    from structlog.testing import capture_logs

    layout = Layout(tmp / "health")
    codes = [f"obj_{c}" for c in "abcdef"]
    config = layout.config(object_code_list=codes, target_count_per_object=8, gpus=[0, 1, 2, 3],
                           main={"command": BAD_GPU_1}, gpu={"quarantine_after": 3})
    with capture_logs() as logs:
        code = run_in_process(config)
    on_bad = sum(1 for e in logs if e["event"] == "round_started" and e["gpu"] == 1)
    quarantined = [e for e in logs if e["event"] == "gpu_quarantined"]
    done = sum(o["status"] == "done" for o in layout.manifest()["objects"].values())
    print(f"GPU health (4 GPUs, GPU 1 fails every round, quarantine_after 3, max_attempts 3): "
          f"exit {code}, {done}/{len(codes)} objects done, GPU "
          f"{[e['gpu'] for e in quarantined]} quarantined, {on_bad} rounds wasted on it")


STAMP = (
    "import os, subprocess, sys, time\n"
    "ticks = os.sysconf('SC_CLK_TCK')\n"
    "launcher = os.getppid()  # forked by the supervisor: the start that counts\n"
    "start = int(open(f'/proc/{launcher}/stat').read().rsplit(')', 1)[1].split()[19])\n"
    "code = subprocess.call([sys.executable, '-m', 'supervisor.emulator'] + sys.argv[3:])\n"
    "end = time.clock_gettime(time.CLOCK_BOOTTIME)  # the clock /proc start times count\n"
    "with open(sys.argv[1], 'a') as f: f.write(f'{sys.argv[2]} {start / ticks} {end}\\n')\n"
    "sys.exit(code)\n"
)


def launch_latency(tmp: Path) -> None:
    layout = Layout(tmp / "latency")
    stamps, script = tmp / "stamps.txt", tmp / "stamp.py"
    script.write_text(STAMP)  # its braces would read as command placeholders
    command = ["{python}", str(script), str(stamps), "{gpu}", *EMULATOR_COMMAND[3:]]
    config = layout.config(object_code_list=["obj_a", "obj_b"], target_count_per_object=60,
                           gpus=[0, 1], main={"command": command})
    assert run_in_process(config) == 0
    by_gpu: dict[str, list[tuple[float, float]]] = {}
    for line in stamps.read_text().splitlines():
        gpu, start, end = line.split()
        by_gpu.setdefault(gpu, []).append((float(start), float(end)))
    gaps = []
    for runs in by_gpu.values():
        runs.sort()
        gaps += [b[0] - a[1] for a, b in zip(runs, runs[1:])]
    print(f"launch latency, a child's exit to the next fork on that GPU ({len(gaps)} gaps, "
          f"/proc start times at 1/{os.sysconf('SC_CLK_TCK')} s): median "
          f"{statistics.median(gaps) * 1e3:.0f} ms, p90 {np.percentile(gaps, 90) * 1e3:.0f} ms")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    structlog.configure(processors=[structlog.processors.JSONRenderer()],
                        logger_factory=structlog.ReturnLoggerFactory(),
                        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        persistence_per_event(tmp)
        startup(tmp)
        merge(tmp)
        bytes_per_object(tmp)
        live_tick()
        gpu_health(tmp)
        launch_latency(tmp)


if __name__ == "__main__":
    main()
