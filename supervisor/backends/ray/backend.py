"""The Ray backend (``[backend] kind = "ray"``): the supervisor's GPUs are the GPUs of a Ray
cluster, one ``remote.Slot`` each, keyed ``"HOST/NODE/gpuN"`` (``supervisor.core.slots``).

``open_backend`` joins the cluster and places a worker on every GPU before the run starts;
during the run the dispatcher calls ``refresh`` every ``gpu.poll_interval_s`` (and at once
when a round was lost) to follow nodes that join or leave. A round runs on its node through
``RayCluster.run_round``; its result file and ``config.txt`` come back as bytes and are
written (atomically) into the head's round folder before ``execute`` returns, so the head
reads, merges and resumes exactly as with the local backend, and never needs the node again.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import anyio

from supervisor.backends import runner
from supervisor.core import slots
from supervisor.backends.base import RoundError, RoundLost
from supervisor.config.schema import Config
from supervisor.gpus.probe import GpuError, Probe, ProbeError, Reading
from supervisor.backends.job import RoundJob, round_env
from supervisor.backends.ray.cluster import READ_TIMEOUT_S, RayCluster
from supervisor.backends.ray.connect import RayMissing, connect
from supervisor.backends.ray.remote import Slot
from supervisor.core.slots import GpuKey

CONNECT_TIMEOUT_S = 5.0
START_HINT = ("start one with `ray start --head --num-gpus N` on this machine and "
              "`ray start --address HEAD_IP:6379 --num-gpus N` on the others "
              "(docs/many-servers.md)")


class RayBackend:
    kind = "ray"
    dynamic = True  # nodes join and leave during a run

    def __init__(self, cluster: RayCluster, read_timeout_s: float = READ_TIMEOUT_S) -> None:
        self.cluster = cluster
        self.read_timeout_s = read_timeout_s
        self._slots: dict[str, Slot] = {}

    # -- the Probe interface, keyed by str(slot) ---------------------------------------
    def gpu_indices(self) -> list[GpuKey]:
        return sorted(self._slots, key=lambda k: self._slots[k])

    def read(self, gpu: Any) -> Reading:
        slot = self._slots.get(gpu)
        if slot is None:
            raise ProbeError(f"{gpu} is not in the cluster any more")
        return self.cluster.read(slot, self.read_timeout_s)

    def nodes(self) -> dict[str, list[GpuKey]]:
        """Node (``HOST/NODE``) -> its GPU keys, for --dry-run and the start-up log."""
        out: dict[str, list[GpuKey]] = {}
        for key in self.gpu_indices():
            out.setdefault(slots.node(key) or "", []).append(key)
        return out

    # -- following the cluster ---------------------------------------------------------
    async def refresh(self) -> tuple[list[GpuKey], list[tuple[GpuKey, str]]]:
        added, removed = await self.cluster.refresh()
        gone = [(str(slot), reason) for slot, reason in removed]
        for key, _ in gone:
            self._slots.pop(key, None)
        for slot in added:
            self._slots[str(slot)] = slot
        return [str(slot) for slot in added], gone

    # -- rounds ------------------------------------------------------------------------
    async def execute(self, config: Config, job: RoundJob, argv: Sequence[str],
                      on_line: Callable[[str, str], None], on_start: Callable[[int], None],
                      stop: anyio.Event, kill: anyio.Event) -> runner.ChildExit:
        slot = self._slots.get(str(job.gpu))
        if slot is None:
            raise RoundLost(f"node lost: {job.gpu} left the cluster before the round started")
        t = config.timeouts
        end = await self.cluster.run_round(
            slot, argv, config.main.cwd, round_env(config), config.main.output_dir, job.name,
            job.object_code, grace_s=t.grace_s, timeout_s=t.round_timeout_s,
            stall_timeout_s=t.stall_timeout_s, on_line=on_line, on_start=on_start, stop=stop,
            kill=kill, keep_folder=config.keep_intermediate)
        if end.lost:
            raise RoundLost(end.lost)
        if end.error or end.returncode is None:
            raise RoundError(end.error or "node error: the round ended without an exit status")
        await anyio.to_thread.run_sync(end.mirror, config.main.output_dir, job.name,
                                       job.object_code)
        return runner.ChildExit(end.pid or 0, end.returncode, end.stopped)

    def close(self) -> None:
        self.cluster.close()


def check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Ray retries an address where nothing answers for ever: look first. "auto" is what
    Ray would use: RAY_ADDRESS, else the address the last `ray start` here wrote down."""
    target, source = address, ""
    if address == "auto":
        recorded = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        source = "RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else str(recorded)
        try:
            target = os.environ.get("RAY_ADDRESS") or recorded.read_text().strip()
        except OSError:
            return  # Ray itself says that no cluster runs here
        if not target or target.startswith("ray://"):
            return
    elif address.startswith("ray://"):
        return
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise GpuError(f'[backend] address = "{address}": expected "auto" or "HOST:PORT" '
                       'such as "10.0.0.1:6379"')
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        where = f" ({target}, from {source})" if source else ""
        raise GpuError(f'[backend] address = "{address}"{where}: no Ray cluster answers '
                       f"there ({exc}); {START_HINT}") from None


def open_backend(config: Config, probe_factory: Callable[[], Probe] | None = None
                 ) -> RayBackend:
    """Join the cluster at ``[backend] address`` and place a worker on each of its GPUs.
    Blocking (call it before the event loop starts). Raises GpuError, with the fix."""
    address = config.backend.address
    check_reachable(address)
    try:
        cluster = connect(address, probe_factory=probe_factory)
    except RayMissing as exc:
        raise GpuError(str(exc)) from None
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GpuError(f'[backend] address = "{address}": could not join a Ray cluster there '
                       f"({first}); {START_HINT}") from None
    backend = RayBackend(cluster, config.gpu.nvml_timeout_s)
    anyio.run(backend.refresh)
    if not backend.gpu_indices():
        backend.close()
        raise GpuError(f'the Ray cluster at [backend] address = "{address}" offers no GPU to '
                       "this supervisor (none, or all held by other jobs, such as another "
                       "supervisor: one supervisor uses every GPU Ray offers; `ray status` "
                       "shows them)")
    return backend
