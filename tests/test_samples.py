"""GPU samples: the append-only store, its readers, and the sampler with a fake probe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import numpy as np
import pytest
from structlog.testing import capture_logs

from conftest import ROOT
from supervisor.gpus import samples
from supervisor.gpus.fake import FakeProbe
from supervisor.gpus.probe import Reading
from supervisor.gpus.static import StaticProbe
from supervisor.gpus import sampler as sampler_mod
from supervisor.gpus.sampler import SampleFile, Sampler
from supervisor.gpus.samples import MAGIC, RECORD


def reading(used: int, util: int | None = 50, processes: dict[int, int] | None = None,
            total: int = 80_000) -> Reading:
    return Reading(total - used, total, util, processes or {})


def test_record_size_and_the_documented_week_on_8_gpus(tmp_path: Path) -> None:
    assert RECORD.itemsize == 28
    week_records = 8 * 7 * 86_400 / sampler_mod.SAMPLE_INTERVAL_S
    assert len(MAGIC) + week_records * RECORD.itemsize < 50e6
    store = SampleFile(tmp_path)
    store.append(1.0, {0: reading(1), 1: reading(2)}, {})
    size = store.path.stat().st_size
    store.append(2.0, {0: reading(1), 1: reading(2)}, {})
    assert store.path.stat().st_size - size == 2 * RECORD.itemsize


def test_round_trip_per_gpu_with_unknown_utilisation(tmp_path: Path) -> None:
    store = SampleFile(tmp_path)
    for t in range(3):
        store.append(100.0 + t, {0: reading(1000 + t), 3: reading(500, util=None)}, {})
    s = samples.load(samples.samples_path(tmp_path))
    assert sorted(s.gpus) == [0, 3]
    assert s.gpus[0]["t"].tolist() == [100.0, 101.0, 102.0]
    assert s.gpus[0]["used_mib"].tolist() == [1000, 1001, 1002]
    assert s.gpus[0]["total_mib"].tolist() == [80_000] * 3
    assert s.gpus[0]["util_percent"].tolist() == [50.0] * 3
    assert np.isnan(s.gpus[3]["util_percent"]).all()
    assert s.round_peak_mib == {}


def test_latest_and_mean_for_status(tmp_path: Path) -> None:
    assert samples.latest_and_mean(tmp_path) == {
        "sampled": False, "gpus": [], "mean_util_percent": None, "samples": 0}
    store = SampleFile(tmp_path)
    store.append(1.0, {0: reading(10, util=20), 1: reading(30, util=None)}, {})
    store.append(2.0, {0: reading(11, util=40), 1: reading(31, util=90)}, {})
    got = samples.latest_and_mean(tmp_path)
    assert got["sampled"] and got["samples"] == 4
    assert got["mean_util_percent"] == pytest.approx((20 + 40 + 90) / 3, abs=0.05)
    assert got["gpus"] == [
        {"gpu": 0, "at": 2.0, "util_percent": 40, "used_mib": 11, "total_mib": 80_000},
        {"gpu": 1, "at": 2.0, "util_percent": 90, "used_mib": 31, "total_mib": 80_000},
    ]


@pytest.fixture
def round_group():
    """A round as the runner starts it: a session leader (the recorded pid) whose child
    (main.py's stand-in) is the process NVML reports."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE,
                            start_new_session=True, text=True)
    child = int(proc.stdout.readline())
    yield proc.pid, child
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_round_memory_matches_children_by_process_group(round_group) -> None:
    leader, child = round_group
    processes = {child: 5000, os.getpid(): 700, 999_999_999: 1}
    assert sampler_mod.round_memory(processes, {leader: "exp__obj__r3"}) == {leader: 5000}
    assert sampler_mod.round_memory({leader: 10, child: 5}, {leader: "r"}) == {leader: 15}


def test_round_peaks_and_reused_pids(tmp_path: Path) -> None:
    store = SampleFile(tmp_path)
    pid = os.getpid()  # leads no group of its own here: matched by its pid itself
    store.append(1.0, {0: reading(9000, processes={pid: 4000})}, {pid: "e__a__r0"})
    store.append(2.0, {0: reading(9000, processes={pid: 6000})}, {pid: "e__a__r0"})
    store.append(3.0, {0: reading(9000, processes={pid: 3000})}, {pid: "e__b__r1"})  # reused
    store.append(4.0, {0: reading(100)}, {})
    s = samples.load(store.path)
    assert s.round_peak_mib == {"e__a__r0": 6000, "e__b__r1": 3000}
    assert s.gpus[0]["t"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_two_rounds_on_one_gpu_give_one_gpu_sample(tmp_path: Path, round_group) -> None:
    leader, child = round_group
    rounds = {leader: "e__a__r0", os.getpid(): "e__b__r0"}
    store = SampleFile(tmp_path)
    assert store.append(1.0, {0: reading(9000, processes={child: 10, os.getpid(): 20})},
                        rounds) == 2
    s = samples.load(store.path)
    assert s.gpus[0]["t"].tolist() == [1.0]
    assert s.round_peak_mib == {"e__a__r0": 10, "e__b__r0": 20}


def test_torn_record_and_torn_name_line_are_ignored_then_cut(tmp_path: Path) -> None:
    pid = os.getpid()
    store = SampleFile(tmp_path)
    for t in range(3):
        store.append(float(t), {0: reading(t, processes={pid: 100})}, {pid: "e__a__r0"})
    with open(store.path, "ab") as f:
        f.write(b"\x01" * 11)  # a record cut short by a kill
    with open(store.names_path, "ab") as f:
        f.write(b'{"id": 2, "pid": 1, "rou')
    s = samples.load(store.path)
    assert s.gpus[0]["t"].tolist() == [0.0, 1.0, 2.0]
    assert s.round_peak_mib == {"e__a__r0": 100}

    again = SampleFile(tmp_path)  # the next run's sampler
    again.append(3.0, {0: reading(3, processes={pid: 200})}, {pid: "e__b__r0"})
    assert (again.path.stat().st_size - len(MAGIC)) % RECORD.itemsize == 0
    s = samples.load(store.path)
    assert s.gpus[0]["t"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert s.gpus[0]["used_mib"].tolist() == [0, 1, 2, 3]
    assert s.round_peak_mib == {"e__a__r0": 100, "e__b__r0": 200}


def test_a_header_cut_short_is_rewritten_and_a_foreign_file_refused(tmp_path: Path) -> None:
    path = samples.samples_path(tmp_path)
    path.write_bytes(MAGIC[:3])
    assert len(samples.read_records(path)) == 0
    SampleFile(tmp_path).append(1.0, {0: reading(1)}, {})
    assert len(samples.read_records(path)) == 1
    path.write_bytes(b"something else entirely")
    with pytest.raises(samples.SamplesError):
        samples.read_records(path)
    assert samples.latest_and_mean(tmp_path)["sampled"] is False  # status goes on
    with pytest.raises(samples.SamplesError):
        SampleFile(tmp_path).append(2.0, {0: reading(1)}, {})


WRITER = """
import os, sys
from pathlib import Path
from supervisor.gpus.probe import Reading
from supervisor.gpus.sampler import SampleFile
store, pid, t = SampleFile(Path(sys.argv[1])), os.getpid(), 0
while True:
    name = f"e__obj__r{t // 7}"
    store.append(float(t), {g: Reading(1000, 2000 + g, t % 101, {pid: t}) for g in range(8)},
                 {pid: name})
    t += 1
"""


def test_kill_9_while_appending_then_resume(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    path = samples.samples_path(tmp_path)
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env)
        deadline = time.monotonic() + 30
        start = path.stat().st_size if path.exists() else 0
        while (not path.exists() or path.stat().st_size < start + 50_000) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        s = samples.load(path)
        assert sorted(s.gpus) == list(range(8))
        assert len({len(a["t"]) for a in s.gpus.values()}) == 1  # one write per sample
        for g, a in s.gpus.items():
            assert (a["total_mib"] == 2000 + g).all()
            steps = np.diff(a["t"])  # each writer counts from 0: +1, or a drop at a restart
            assert ((steps == 1) | (steps < 0)).all() and (steps < 0).sum() == attempt
        assert s.round_peak_mib and all(n.startswith("e__obj__r") for n in s.round_peak_mib)


# -- the sampler ---------------------------------------------------------------------------
async def wait_for(predicate, timeout_s: float = 10.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():
            await anyio.sleep(0.01)


def samples_of(tmp_path: Path, gpu: int) -> int:
    gpus = samples.load(samples.samples_path(tmp_path)).gpus
    return len(gpus[gpu]["t"]) if gpu in gpus else 0


@pytest.mark.anyio
async def test_sampler_records_utilisation_memory_and_round_memory(
        tmp_path: Path, round_group) -> None:
    leader, child = round_group
    probe = FakeProbe({0: 60_000, 1: 80_000})
    probe.util[0], probe.processes[0] = 97, {child: 7000}
    sampler = Sampler(tmp_path, probe, lambda: [0, 1], lambda: {leader: "e__obj__r5"},
                      interval_s=0.02)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        await wait_for(lambda: samples_of(tmp_path, 1) >= 3)
        tg.cancel_scope.cancel()
    s = samples.load(samples.samples_path(tmp_path))
    assert set(s.gpus[0]["util_percent"].tolist()) == {97.0}
    assert set(s.gpus[0]["used_mib"].tolist()) == {81_559 - 60_000}
    assert set(s.gpus[1]["util_percent"].tolist()) == {0.0}
    assert s.round_peak_mib == {"e__obj__r5": 7000}


class CountingProbe(FakeProbe):
    def __init__(self, free: dict[int, int]) -> None:
        super().__init__(free)
        self.reads = {g: 0 for g in free}

    def read(self, index: int) -> Reading:
        self.reads[index] += 1
        return super().read(index)


@pytest.mark.anyio
async def test_a_hanging_gpu_never_blocks_and_is_abandoned_on_cancel(tmp_path: Path) -> None:
    probe = CountingProbe({0: 50_000, 1: 50_000, 2: 50_000})
    probe.hanging, probe.failing = {1}, {2}
    with capture_logs() as logs:
        sampler = Sampler(tmp_path, probe, lambda: [0, 1, 2], dict, interval_s=0.02,
                          timeout_s=0.1)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sampler.run)
                await wait_for(lambda: samples_of(tmp_path, 0) >= 10)
                started = time.monotonic()
                tg.cancel_scope.cancel()  # GPU 1's read is still blocked in its thread
            assert time.monotonic() - started < 1.0
        finally:
            probe.release_hang()
    s = samples.load(samples.samples_path(tmp_path))
    assert sorted(s.gpus) == [0]
    failed = [e for e in logs if e["event"] == "gpu_sample_failed"]
    assert sorted(e["gpu"] for e in failed) == [1, 2]  # once each
    assert "did not answer" in next(e for e in failed if e["gpu"] == 1)["error"]
    assert probe.reads[1] == 1  # not read again while its read hung
    assert probe.reads[2] >= 10  # a failing GPU is tried again at each sample


@pytest.mark.anyio
async def test_a_hung_gpu_is_read_again_once_its_read_returns(tmp_path: Path) -> None:
    probe = FakeProbe({0: 50_000, 1: 50_000})
    probe.hanging = {1}
    sampler = Sampler(tmp_path, probe, lambda: [0, 1], dict, interval_s=0.02, timeout_s=0.05)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        await wait_for(lambda: samples_of(tmp_path, 0) >= 5)
        assert sampler.pending == {1} and samples_of(tmp_path, 1) == 0
        probe.hanging = set()
        probe.release_hang()
        await wait_for(lambda: samples_of(tmp_path, 1) >= 2)
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_without_nvml_nothing_is_sampled(tmp_path: Path) -> None:
    with capture_logs() as logs:
        sampler = Sampler(tmp_path, StaticProbe([0, 1]), lambda: [0, 1], dict,
                          interval_s=0.01)
        with anyio.fail_after(5):
            await sampler.run()  # returns by itself
    assert not samples.samples_path(tmp_path).exists()
    assert [e["event"] for e in logs] == ["gpu_samples_off"]
    assert samples.latest_and_mean(tmp_path)["sampled"] is False


@pytest.mark.anyio
async def test_a_write_error_is_logged_once_and_sampling_goes_on(tmp_path: Path) -> None:
    samples.samples_path(tmp_path).write_bytes(b"not ours, keep it")
    probe = FakeProbe({0: 1})
    with capture_logs() as logs:
        sampler = Sampler(tmp_path, probe, lambda: [0], dict, interval_s=0.01)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sampler.run)
            await wait_for(lambda: probe.polls >= 5)
            tg.cancel_scope.cancel()
    assert [e["event"] for e in logs] == ["gpu_samples_not_written"]
    assert samples.samples_path(tmp_path).read_bytes() == b"not ours, keep it"


def test_cluster_gpus_are_named_and_survive_a_restart_of_the_sampler(tmp_path: Path) -> None:
    a, b = "127.0.0.1/1a2b3c4d/gpu0", "127.0.0.1/5e6f7a8b/gpu0"  # GPU 0 of two nodes
    f = SampleFile(tmp_path)
    f.append(1.0, {a: Reading(100, 1000, 10, {}), b: Reading(200, 1000, 20, {})}, {})
    again = SampleFile(tmp_path)  # a resumed run numbers the same GPU the same way
    again.append(2.0, {b: Reading(300, 1000, 30, {})}, {})
    gpus = samples.load(tmp_path / samples.SAMPLES_NAME).gpus
    assert set(gpus) == {a, b}
    assert list(gpus[b]["util_percent"]) == [20.0, 30.0] and list(gpus[a]["t"]) == [1.0]
    assert [g["gpu"] for g in samples.latest_and_mean(tmp_path)["gpus"]] == [a, b]


@pytest.mark.anyio
async def test_the_sampler_teaches_the_pool_peaks_of_rounds_never_read_at_admission(
        tmp_path: Path) -> None:
    """Seen on an H200: every round started at once, no admission read followed, and the
    footprint stayed unknown although the sampler saw each round's 1.6 GiB."""
    from supervisor.config.schema import GpuSettings
    from supervisor.gpus.pool import GpuPool

    probe = FakeProbe({0: 80_000})
    pool = GpuPool(probe, [0], GpuSettings(max_rounds_per_gpu="auto"))
    leader = os.getpid()  # stands for the round's process group leader
    pool.take(0, "r")
    pool.started(0, "r", leader)
    sampler = Sampler(tmp_path, probe, lambda: [0], lambda: {leader: "r"}, observe=pool.observe)
    for mib in (14, 1634, 900):  # first sighting, peak, later
        probe.processes[0] = {leader: mib}
        await sampler.sample_once()
    assert pool.release(0, "r") == 1634 and pool.estimate_mib() == 1634
