"""What runs on each node of a Ray cluster: one actor per GPU, reused for every round.

``supervisor.backends.ray.cluster`` (the head) places one ``GpuActor`` on every GPU of the cluster
(``num_gpus=1, num_cpus=0``, pinned to its node) and calls it; this module itself never
imports Ray, so it can be read and tested without it.

A round runs exactly as the local backend runs it: ``runner.run_child`` starts
``python -S supervisor/backends/launch.py <this actor's pid> -- argv`` in a session of its own, so the
round's whole process group dies with this worker (PR_SET_PDEATHSIG), splits its output on
``\\n`` and ``\\r``, and stops its group on timeout, stall, stop (SIGTERM, SIGKILL after
grace) or kill. ``run`` is an async generator (a Ray streaming-generator task): it yields
batches of ``(kind, ...)`` messages in order and ends with one ``("done", ...)`` message that
carries the result file's bytes, read and (unless kept) removed before it is sent, so a head
that is also a node can write its copy back into the same folder.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import anyio

from supervisor.backends import runner
from supervisor.gpus.nvml import NvmlProbe
from supervisor.gpus.probe import Probe, ProbeError, Reading
from supervisor.gpus.static import StaticProbe
from supervisor.gpus.pool import process_group

Message = tuple[Any, ...]


def by_group(reading: Reading) -> Reading:
    """Key NVML's per-process memory by process group, summed.

    A round's group id is its launcher's pid, which the head knows (``on_start``), so the
    head can match a remote round's memory without reading another machine's /proc."""
    groups: dict[int, int] = {}
    for pid, mib in reading.processes.items():
        key = process_group(pid) or pid
        groups[key] = groups.get(key, 0) + mib
    return Reading(reading.free_mib, reading.total_mib, reading.util_percent, groups)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


class GpuActor:
    """One GPU of one node. ``probe_factory`` (picklable, called here) replaces NVML in
    tests; without it NVML is used, or ``Reading()`` (all None) where NVML is missing."""

    def __init__(self, probe_factory: Callable[[], Probe] | None = None) -> None:
        self._probe_factory = probe_factory
        self._probe: Probe | None = None
        self._controls: dict[str, tuple[anyio.Event, anyio.Event]] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._early: dict[str, str] = {}  # signals that came before their round
        import ray  # only here: the class is importable without Ray
        ids = ray.get_gpu_ids()
        self.gpu: int | str = int(ids[0]) if ids and str(ids[0]).isdigit() else (
            ids[0] if ids else -1)
        self.node = ray.get_runtime_context().get_node_id()
        self.host = ray.util.get_node_ip_address()

    async def info(self) -> dict[str, Any]:
        return {"node": self.node, "gpu": self.gpu, "host": self.host, "pid": os.getpid()}

    # -- NVML ----------------------------------------------------------------------------
    def _get_probe(self) -> Probe:
        if self._probe is None:
            if self._probe_factory is not None:
                self._probe = self._probe_factory()
            else:
                try:
                    self._probe = NvmlProbe()
                except ProbeError:  # a CPU-only node: no memory checks, like StaticProbe
                    self._probe = StaticProbe([])
        return self._probe

    async def read(self) -> Reading:
        """This GPU's reading (raises ProbeError like Probe.read)."""
        probe = self._get_probe()
        return by_group(await asyncio.to_thread(probe.read, self.gpu))

    # -- rounds --------------------------------------------------------------------------
    async def signal(self, token: str, kind: str) -> None:
        """``stop``: SIGTERM the round's group, SIGKILL after grace; ``kill``: SIGKILL now."""
        control = self._controls.get(token)
        if control is None:  # not started yet, or already over: keep a bounded few
            self._early[token] = kind
            while len(self._early) > 256:
                self._early.pop(next(iter(self._early)))
            return
        stop, kill = control
        stop.set()
        if kind == "kill":
            kill.set()

    async def finish(self, token: str, kind: str) -> None:
        """Signal the round and return once its child has exited (the head's cancel)."""
        await self.signal(token, kind)
        task = self._tasks.get(token)
        if task is not None:
            await asyncio.shield(task)

    async def run(self, token: str, argv: list[str], cwd: str, env: dict[str, str],
                  output_dir: str, name: str, object_code: str, grace_s: float,
                  timeout_s: float, stall_timeout_s: float,
                  keep_folder: bool) -> AsyncIterator[list[Message]]:
        stop, kill = anyio.Event(), anyio.Event()
        self._controls[token] = (stop, kill)
        early = self._early.pop(token, None)
        if early is not None:
            await self.signal(token, early)
        queue: asyncio.Queue[Message] = asyncio.Queue()
        folder = Path(output_dir) / name
        full_env = {"PYTHONUNBUFFERED": "1", **os.environ, **env,
                    "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": str(self.gpu)}

        limits = {"timeout_s": timeout_s, "stall_timeout_s": stall_timeout_s,
                  "grace_s": grace_s}
        task = asyncio.ensure_future(self._child(queue, folder, argv, cwd, full_env, stop,
                                                 kill, limits))
        self._tasks[token] = task
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                end = next((m for m in batch if m[0] == "exit"), None)
                if end is None:
                    yield batch
                    continue
                if len(batch) > 1:
                    yield [m for m in batch if m[0] != "exit"]
                await task
                result, config = await asyncio.to_thread(self._collect, folder, object_code,
                                                         keep_folder)
                yield [("done", end[1], end[2], end[3], result, config)]
                return
        finally:
            if not task.done():  # the generator was cancelled or closed: end the round
                stop.set()
            else:
                self._forget(token)
            task.add_done_callback(lambda _: self._forget(token))

    async def _child(self, queue: asyncio.Queue[Message], folder: Path, argv: list[str],
                     cwd: str, env: dict[str, str], stop: anyio.Event, kill: anyio.Event,
                     limits: dict[str, float]) -> None:
        """The round itself, its lines and its end put on ``queue`` as messages."""
        try:
            # A stale result from an earlier attempt must never pass for this one's.
            await asyncio.to_thread(shutil.rmtree, folder, True)
            exit_ = await runner.run_child(
                argv, cwd=Path(cwd), env=env,
                on_line=lambda stream, line: queue.put_nowait(("line", stream, line)),
                on_start=lambda pid: queue.put_nowait(("started", pid)),
                stop=stop, kill=kill, **limits)
            queue.put_nowait(("exit", exit_.returncode, exit_.stopped, None))
        except OSError as exc:
            queue.put_nowait(("exit", None, None, f"could not start: {exc}"))
        except BaseException as exc:
            queue.put_nowait(("exit", None, None, f"node error: {type(exc).__name__}: {exc}"))
            raise

    def _forget(self, token: str) -> None:
        self._controls.pop(token, None)
        self._tasks.pop(token, None)

    @staticmethod
    def _collect(folder: Path, object_code: str,
                 keep_folder: bool) -> tuple[bytes | None, bytes | None]:
        results = folder / "results"
        found = _read_bytes(results / f"{object_code}.npy"), _read_bytes(results / "config.txt")
        if not keep_folder:
            shutil.rmtree(folder, ignore_errors=True)
        return found
