from __future__ import annotations

import os

import pytest

from supervisor.gpus.nvml import NvmlProbe
from supervisor.gpus.probe import ProbeError
from supervisor.gpus.reads import read_gpus
from supervisor.config.schema import GpuSettings
from supervisor.gpus.fake import FakeProbe
from supervisor.gpus.probe import GpuError, Reading
from supervisor.gpus.pool import GpuPool
from supervisor.gpus.static import StaticProbe


def pool(free: dict[int, int], selection="all", **settings) -> GpuPool:
    defaults = dict(min_free_mib=8000, round_memory_mib=6000, max_rounds_per_gpu=1)
    return GpuPool(FakeProbe(free), selection, GpuSettings(**{**defaults, **settings}))


def test_slots_limit_rounds_per_gpu() -> None:
    p = pool({0: 20000, 1: 20000})
    assert p.shortage(0, p.probe.read(0)) is None
    p.take(0, "r0")
    assert "max_rounds_per_gpu" in p.shortage(0, p.probe.read(0))
    p.release(0, "r0")
    assert p.shortage(0, p.probe.read(0)) is None


def test_gpu_short_of_memory_waits_until_it_frees() -> None:
    p = pool({0: 4000})
    assert "< 8000" in p.shortage(0, p.probe.read(0))
    p.probe.free[0] = 9000
    assert p.shortage(0, p.probe.read(0)) is None


def test_memory_of_rounds_nvml_does_not_show_yet_is_reserved() -> None:
    p = pool({0: 16000}, max_rounds_per_gpu=4)
    p.take(0, "a")  # 16000 - 6000 = 10000 >= 8000
    assert p.shortage(0, p.probe.read(0)) is None
    p.take(0, "b")  # 16000 - 12000 = 4000 < 8000: NVML has not seen them yet
    assert "12000 reserved: 2 x 6000" in p.shortage(0, p.probe.read(0))


def test_memory_nvml_already_shows_is_not_subtracted_again() -> None:
    """80 GB card, 20 GB rounds, estimate = real footprint: 3 rounds fit, not 2."""
    p = pool({0: 80_000}, max_rounds_per_gpu=8, min_free_mib=25_000, round_memory_mib=20_000)
    me = os.getpid()  # stands for a round's process group leader
    for n, name in enumerate(("a", "b", "c")):
        assert p.shortage(0, p.probe.read(0)) is None, name
        p.take(0, name)
        p.started(0, name, me + n)
        p.probe.free[0] -= 20_000  # NVML now shows the round's memory...
        p.probe.processes[0][me + n] = 20_000  # ...as its process's
    assert p.probe.free[0] == 20_000 and p.shortage(0, p.probe.read(0)) is not None
    assert p.footprint_mib is None  # learned when a round ends, from its peak
    assert p.release(0, "a") == 20_000 and p.footprint_mib == 20_000


def test_auto_packing_learns_the_footprint_from_rounds_that_ended() -> None:
    p = pool({0: 80_000}, max_rounds_per_gpu="auto", min_free_mib=1000, round_memory_mib=30_000)
    p.take(0, "a")
    p.started(0, "a", 4242)
    # Before any measurement the estimate (30 GB) is reserved: 80 - 30 = 50 GB left.
    assert p.shortage(0, p.probe.read(0)) is None
    p.take(0, "b")
    assert "60000 reserved: 2 x 30000" in p.shortage(0, p.probe.read(0))
    p.probe.processes[0] = {4242: 10_000}  # NVML shows round a: 10 GB so far
    p.probe.free[0] = 70_000
    # Still 30 GB each until a round has ended: a may still grow. 70 - 20 - 30 = 20 < 30.
    assert "50000 reserved" in p.shortage(0, p.probe.read(0))
    assert p.release(0, "a") == 10_000 and p.footprint_mib == 10_000
    p.probe.processes[0], p.probe.free[0] = {}, 80_000
    # Learned: b and one more reserve 10 GB each: 80 - 10 = 70 GB >= max(1000, 10000)
    assert p.shortage(0, p.probe.read(0)) is None and p.estimate_mib() == 10_000


def test_a_card_smaller_than_what_a_round_needs_is_named_with_the_setting_to_change() -> None:
    """Found by trying it: a card that could not take a round even empty waited for ever."""
    p = pool({0: 40_000, 1: 80_000}, max_rounds_per_gpu="auto", min_free_mib=500,
             round_memory_mib=50_000)
    p.probe.total = {0: 40_000, 1: 80_000}
    assert p.too_small(0, p.probe.read(0)) == "GPU 0 has 40000 MiB in all"
    assert p.too_small(1, p.probe.read(1)) is None
    assert p.need_mib() == (50_000, "[gpu] round_memory_mib = 50000, what one round is "
                                    "expected to take at its peak")
    p.take(1, "a")
    p.started(1, "a", 4242)
    p.probe.processes[1] = {4242: 30_000}
    p.shortage(1, p.probe.read(1))  # NVML shows the round: 30 GB at its peak
    assert p.release(1, "a") == 30_000  # learned: a round takes 30 GB, GPU 0 fits now
    assert p.too_small(0, p.probe.read(0)) is None
    assert p.need_mib()[1] == "the largest peak of a round so far (30000 MiB)"
    # A fixed number: min_free_mib when it is above what a round takes.
    fixed = pool({0: 4_000}, min_free_mib=8_000)
    fixed.probe.total = {0: 6_000}
    assert fixed.too_small(0, fixed.probe.read(0)) == "GPU 0 has 6000 MiB in all"
    assert fixed.need_mib() == (8_000, "[gpu] min_free_mib = 8000")
    assert pool({0: 4_000}).too_small(0, Reading(4_000, None)) is None  # unknown: no claim


def test_a_fixed_level_admits_by_the_learned_footprint_and_a_full_card_is_closed() -> None:
    """Found by a tester: with max_rounds_per_gpu = 2 a second round started at 2986 MiB
    free beside a round NVML showed at 6014 MiB, because only min_free_mib was asked."""
    p = pool({0: 9_000, 1: 5_000}, max_rounds_per_gpu=2, min_free_mib=500,
             round_memory_mib=2_000)
    p.probe.total = {0: 9_000, 1: 9_000}
    p.take(0, "a")
    p.started(0, "a", 4242)
    p.probe.processes[0], p.probe.free[0] = {4242: 6_014}, 2_986
    assert p.shortage(0, p.probe.read(0)) is not None  # 6014 > 2000: the peak so far
    assert p.release(0, "a") == 6_014
    p.probe.processes[0], p.probe.free[0] = {}, 9_000
    assert p.shortage(0, p.probe.read(0)) is None
    p.take(0, "b")  # not seen yet: 6014 reserved, 2986 left
    assert "< 6014 needed" in p.shortage(0, p.probe.read(0))
    # GPU 1: another user's 4000 MiB: even empty of our rounds it cannot take one
    assert not p.closed(1)  # not read yet: open
    p.observe(1, p.probe.read(1))
    assert p.closed(1) and not p.closed(0)
    # GPU 0 full of our own round is not closed: it frees when the round ends
    p.started(0, "b", 4343)
    p.probe.processes[0], p.probe.free[0] = {4343: 6_014}, 2_986
    p.observe(0, p.probe.read(0))
    assert not p.closed(0)


def test_a_first_sighting_does_not_end_the_reservation() -> None:
    """On an H200, NVML listed a round's process at 14 MiB ~0.1 s before its 2.6 GiB."""
    p = pool({0: 16_000}, max_rounds_per_gpu="auto", min_free_mib=1000, round_memory_mib=6000)
    p.take(0, "a")
    p.started(0, "a", 4242)
    p.probe.processes[0] = {4242: 14}
    p.probe.free[0] = 16_000 - 14
    short = p.shortage(0, p.probe.read(0))  # 15986 - (6000 - 14) = 10000 >= 6000: room
    assert short is None
    p.take(0, "b")  # b unseen, a still 5986 short of the estimate: 15986 - 11986 < 6000
    assert "11986 reserved" in p.shortage(0, p.probe.read(0))


def test_selection_restricts_and_unknown_index_is_an_error() -> None:
    assert pool({0: 1, 1: 1, 2: 1}, [2]).gpus == [2]
    with pytest.raises(GpuError, match=r"\[5\]"):
        pool({0: 1}, [5])


@pytest.mark.anyio
async def test_failing_and_hanging_reads_become_errors_without_blocking() -> None:
    import anyio

    p = pool({0: 20000, 1: 20000, 2: 20000})
    p.probe.failing.add(1)
    p.probe.hanging.add(2)
    with anyio.fail_after(5):
        readings = await read_gpus(p.probe, [0, 1, 2], 0.2, p.reading_now)
    assert readings[0].free_mib == 20000
    assert "fell off the bus" in str(readings[1])
    assert "did not answer" in str(readings[2]) and 2 in p.reading_now
    # The hung GPU is not read again while its thread is stuck.
    with anyio.fail_after(5):
        again = await read_gpus(p.probe, [0, 2], 0.2, p.reading_now)
    assert 2 not in again
    p.probe.release_hang()


def test_static_probe_admits_without_memory_checks() -> None:
    p = GpuPool(StaticProbe([0, 1]), [0, 1], GpuSettings())
    assert p.shortage(0, p.probe.read(0)) is None


def test_real_nvml_probe() -> None:
    try:
        probe = NvmlProbe()
    except ProbeError as exc:
        pytest.skip(f"no NVML here: {exc}")
    indices = probe.gpu_indices()
    assert indices == list(range(len(indices)))
    for index in indices:
        reading = probe.read(index)
        assert 0 <= reading.free_mib <= reading.total_mib
        assert reading.util_percent is None or 0 <= reading.util_percent <= 100
        assert all(pid > 0 and mib >= 0 for pid, mib in reading.processes.items())




def test_a_cluster_gpu_that_leaves_and_comes_back_is_in_the_pool_again() -> None:
    p = pool({0: 20000, 1: 20000})
    p.take(1, "r")
    p.remove(1)  # its node left while a round ran there
    assert p.gpus == [0] and p.in_flight(1) == 1
    p.release(1, "r")
    p.add(1)  # a replaced worker on the same GPU
    assert p.gpus == [0, 1] and p.has_slot(1)


@pytest.mark.parametrize("key,value,named", [
    ("EMULATOR_GPU_MEMORY_MIB", "lots", "a card's size in MiB"),
    ("EMULATOR_GPU_CURVE", "inf,1", "positive numbers"),
    ("EMULATOR_GPU_CURVE", "1,nan", "positive numbers"),
    ("EMULATOR_GPU_CURVE", "1,-2", "positive numbers"),
    ("EMULATOR_ROUND_MEMORY_MIB", "lots", "what one round takes on its card"),
    ("EMULATOR_ROUND_MEMORY_MIB", "\u00b2", "what one round takes on its card"),
    ("EMULATOR_GPU_MEMORY_MIB", "\u00b2", "a card's size in MiB"),
    ("EMULATOR_MEMORY_DELAY_S", "x", "seconds before a round's memory appears"),
])
def test_the_emulator_probe_names_a_bad_card_setting_before_any_round(
        tmp_path, key, value, named) -> None:
    """Found by trying it: a bad footprint made every round fail with a traceback, and an
    infinite curve was taken."""
    from supervisor.emulator.cards import curve
    from supervisor.gpus.emulated import EmulatorProbe

    env = {"EMULATOR_GPU_DIR": str(tmp_path), key: value}
    with pytest.raises(GpuError, match=f"{key} = '{value}': expected {named}"):
        EmulatorProbe([0], env)
    if key == "EMULATOR_GPU_CURVE":  # the rounds' own reading says the same
        with pytest.raises(ValueError, match="expected positive numbers"):
            curve(value)
    assert EmulatorProbe([0], {"EMULATOR_GPU_DIR": str(tmp_path),
                               "EMULATOR_GPU_CURVE": "1,1.8",
                               "EMULATOR_ROUND_MEMORY_MIB": "6000"}).read(0).total_mib
