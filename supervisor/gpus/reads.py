"""Reading GPUs without ever blocking the run: each read in a daemon thread under a
timeout (NVML can hang on a failing card)."""

from __future__ import annotations

import threading
from typing import Sequence

import anyio
import anyio.from_thread
import anyio.lowlevel

from supervisor.gpus.probe import Probe, ProbeError, Reading


async def read_gpus(probe: Probe, gpus: Sequence[int], timeout_s: float,
                    busy: set[int]) -> dict[int, Reading | ProbeError]:
    """Read ``gpus`` concurrently, each in a daemon thread under ``timeout_s``.

    A read that does not return in time is abandoned (its thread may stay stuck in NVML
    for good, and must never block drain or exit: daemon threads do not); the GPU gets a
    ProbeError and stays in ``busy`` until the thread comes back.
    """
    results: dict[int, Reading | ProbeError] = {}
    token = anyio.lowlevel.current_token()
    done = {gpu: anyio.Event() for gpu in gpus if gpu not in busy}

    def work(gpu: int) -> None:
        try:
            value: Reading | ProbeError = probe.read(gpu)
        except ProbeError as exc:
            value = exc
        except Exception as exc:  # a probe bug must cost one reading, not the run
            value = ProbeError(f"reading GPU {gpu} failed ({type(exc).__name__}: {exc})")
        busy.discard(gpu)
        results.setdefault(gpu, value)
        try:
            anyio.from_thread.run_sync(done[gpu].set, token=token)
        except RuntimeError:  # the event loop is gone: nobody waits any more
            pass

    for gpu in done:
        busy.add(gpu)
        threading.Thread(target=work, args=(gpu,), daemon=True, name=f"nvml-{gpu}").start()
    with anyio.move_on_after(timeout_s):
        for event in done.values():
            await event.wait()
    late = ProbeError  # a read still running when the time is up
    return {gpu: results.get(gpu) or late(
        f"NVML did not answer for GPU {gpu} within gpu.nvml_timeout_s = {timeout_s:g}")
        for gpu in done}
