from __future__ import annotations

import pytest

from supervisor import gpus
from supervisor.config import GpuSettings
from supervisor.gpus import FakeProbe, GpuError, GpuPool, StaticProbe


def pool(free: dict[int, int], selection="all", **settings) -> GpuPool:
    defaults = dict(min_free_mib=8000, round_memory_mib=6000, max_rounds_per_gpu=1)
    return GpuPool(FakeProbe(free), selection, GpuSettings(**{**defaults, **settings}))


def test_admits_least_busy_gpu_with_enough_memory() -> None:
    p = pool({0: 20000, 1: 20000})
    assert p.admit().gpu == 0
    assert p.admit().gpu == 1
    full = p.admit()
    assert full.gpu is None and full.busy == [0, 1]
    p.release(1)
    assert p.admit().gpu == 1


def test_gpu_short_of_memory_waits_until_it_frees() -> None:
    p = pool({0: 4000})
    refused = p.admit()
    assert refused.gpu is None and "min_free_mib 8000" in refused.short[0]
    p.probe.free[0] = 9000
    assert p.admit().gpu == 0


def test_memory_of_rounds_in_flight_is_reserved() -> None:
    p = pool({0: 16000}, max_rounds_per_gpu=4)
    assert p.admit().gpu == 0  # 16000 >= 8000
    second = p.admit()  # 16000 - 6000 = 10000 >= 8000
    assert second.gpu == 0
    third = p.admit()  # 16000 - 12000 = 4000 < 8000: NVML has not seen them yet
    assert third.gpu is None and "2 x 6000 reserved" in third.short[0]


def test_selection_restricts_and_unknown_index_is_an_error() -> None:
    assert pool({0: 1, 1: 1, 2: 1}, [2]).gpus == [2]
    with pytest.raises(GpuError, match=r"\[5\]"):
        pool({0: 1}, [5])


def test_gpu_error_takes_it_out_of_the_pool() -> None:
    p = pool({0: 20000, 1: 20000})
    p.probe.failing.add(0)
    admission = p.admit()
    assert admission.gpu == 1 and "fell off the bus" in admission.lost[0]
    assert p.gpus == [1]


def test_a_failed_reading_is_reported_even_when_another_gpu_is_chosen() -> None:
    p = pool({0: 20000, 1: 20000})
    p.probe.failing.add(1)
    admission = p.admit(avoid=frozenset({1}))
    assert admission.gpu == 0 and 1 in admission.lost and p.gpus == [0]


def test_static_probe_admits_without_memory_checks() -> None:
    p = GpuPool(StaticProbe([3, 4]), [3, 4], GpuSettings(min_free_mib=10**9))
    assert [p.admit().gpu, p.admit().gpu, p.admit().gpu] == [3, 4, None]


def test_make_probe_without_nvml(monkeypatch) -> None:
    def fail(self) -> None:
        raise gpus.ProbeError("NVML did not start (no driver)")

    monkeypatch.setattr(gpus.NvmlProbe, "__init__", fail)
    probe, warning = gpus.make_probe("auto", [0, 1])
    assert isinstance(probe, StaticProbe) and "without memory checks" in warning
    with pytest.raises(GpuError, match='gpus = "all" needs NVML'):
        gpus.make_probe("auto", "all")
    with pytest.raises(GpuError):
        gpus.make_probe("nvml", [0])


def test_real_nvml_probe() -> None:
    try:
        probe = gpus.NvmlProbe()
    except gpus.ProbeError as exc:
        pytest.skip(f"no NVML here: {exc}")
    indices = probe.gpu_indices()
    assert indices == list(range(len(indices)))
    for index in indices:
        reading = probe.read(index)
        assert 0 <= reading.free_mib <= reading.total_mib
        assert reading.util_percent is None or 0 <= reading.util_percent <= 100
        assert all(pid > 0 and mib >= 0 for pid, mib in reading.processes.items())


def test_retries_prefer_another_gpu_but_take_the_same_if_alone() -> None:
    p = pool({0: 20000, 1: 20000})
    assert p.admit(avoid=frozenset({0})).gpu == 1
    assert p.admit(avoid=frozenset({0})).gpu == 0  # 1 is busy now: 0 is still allowed
