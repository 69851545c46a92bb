"""Rounds on a Ray cluster: the supervisor stays one process (the head), only WHERE a
round runs changes.

``connect(address)`` (``supervisor.backends.ray.connect``) joins a running cluster; ``await cluster.refresh()`` places one
``node.GpuActor`` on every GPU (``num_gpus=1, num_cpus=0``: a GPU task reserves a CPU
by default and would starve), pinned to its node and reused for every round there. A
slot is ``(node id, physical GPU id)``; that id goes to ``--gpu`` and, on the node, to
``CUDA_VISIBLE_DEVICES`` with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. Lines come back through a
streaming-generator task (in order, never deduplicated: ``log_to_driver`` is off), the
result file's bytes come back at the end. A dead node or worker ends a round with
``RemoteExit.lost`` set, and its slots leave at the next ``refresh``.

``RayCluster`` also has the ``Probe`` interface with slots as indices (``gpu_indices``,
blocking ``read``), so ``gpus.reads.read_gpus(cluster, slots, ...)`` works unchanged.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import anyio

from supervisor.backends.ray.node import GpuActor
from supervisor.backends.ray.remote import RemoteExit, Slot
from supervisor.gpus.probe import Probe, ProbeError, Reading

READY_WAIT_S = 30.0  # how long refresh() waits for new actors (a worker starts in ~1 s)
READ_TIMEOUT_S = 10.0
ABORT_MARGIN_S = 5.0  # a cancelled round: grace_s + this for the node to confirm the end


@dataclass
class _Worker:
    actor: Any
    node: str
    ready: Any  # ref of actor.info()
    slot: Slot | None = None
    pid: int | None = None


class RayCluster:
    def __init__(self, ray: Any, probe_factory: Callable[[], Probe] | None = None) -> None:
        self._ray = ray
        self._actor_class = ray.remote(GpuActor)
        self._probe_factory = probe_factory
        self._workers: list[_Worker] = []  # starting or live
        self._lost: dict[Slot, str] = {}  # left since the last refresh, with the reason
        self._lock = threading.Lock()  # read() runs in threads (gpus.reads.read_gpus)
        from ray import exceptions as rex
        self._lost_errors = (rex.RayActorError, rex.WorkerCrashedError, rex.NodeDiedError,
                             rex.ObjectLostError, rex.OwnerDiedError, rex.LocalRayletDiedError)

    # -- slots -------------------------------------------------------------------------
    def slots(self) -> list[Slot]:
        return sorted(w.slot for w in list(self._workers) if w.slot is not None)

    def gpu_indices(self) -> list[Slot]:  # the Probe interface
        return self.slots()

    def actor_pid(self, slot: Slot) -> int | None:
        worker = self._worker(slot)
        return worker.pid if worker else None

    def _worker(self, slot: Slot) -> _Worker | None:
        return next((w for w in list(self._workers) if w.slot == slot), None)

    def _drop(self, worker: _Worker, reason: str | None) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
                if worker.slot is not None and reason is not None:
                    self._lost[worker.slot] = reason
        try:
            self._ray.kill(worker.actor, no_restart=True)
        except Exception:  # already dead
            pass

    async def refresh(self, wait_s: float = READY_WAIT_S
                      ) -> tuple[list[Slot], list[tuple[Slot, str]]]:
        """Follow the cluster: (slots added, slots removed with the reason). Apply the
        removed ones first: a GPU whose worker died on a live node leaves and comes back in
        one call. Waits up to ``wait_s`` for the workers it places now; a worker still
        waiting for its GPU (held by another job) is only looked at again, never awaited."""
        nodes = await anyio.to_thread.run_sync(self._ray.nodes)
        alive = {n["NodeID"]: n for n in nodes if n.get("Alive")}
        for worker in list(self._workers):
            if worker.node not in alive:
                dead = next((n for n in nodes if n["NodeID"] == worker.node), {})
                why = dead.get("DeathReasonMessage") or "it left the cluster"
                self._drop(worker, f"node lost: {dead.get('NodeManagerAddress', '?')} "
                                   f"({worker.node[:8]}): {why}")
        starting = {id(w): 0.05 for w in self._workers if w.slot is None}
        for node_id, node in alive.items():
            have = sum(w.node == node_id for w in self._workers)
            for _ in range(int(node.get("Resources", {}).get("GPU", 0)) - have):
                with self._lock:
                    self._workers.append(self._place(node_id))
        added: list[Slot] = []
        async with anyio.create_task_group() as tg:
            for worker in [w for w in self._workers if w.slot is None]:
                tg.start_soon(self._await_ready, worker, starting.get(id(worker), wait_s),
                              added)
        with self._lock:
            removed, self._lost = list(self._lost.items()), {}
        return sorted(added), removed

    def _place(self, node_id: str) -> _Worker:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        actor = self._actor_class.options(
            num_gpus=1, num_cpus=0, max_restarts=0, max_task_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        ).remote(self._probe_factory)
        return _Worker(actor, node_id, actor.info.remote())

    async def _await_ready(self, worker: _Worker, wait_s: float, added: list[Slot]) -> None:
        with anyio.move_on_after(wait_s):  # still starting: a later refresh looks again
            try:
                info = await worker.ready
            except self._ray.exceptions.RayError:  # its node went away while it started
                self._drop(worker, None)
                return
            worker.pid, worker.slot = info["pid"], Slot(info["node"], info["gpu"], info["host"])
            added.append(worker.slot)

    # -- NVML on the node ----------------------------------------------------------------
    def read(self, slot: Slot, timeout_s: float = READ_TIMEOUT_S) -> Reading:
        """Blocking, like Probe.read: call it from a thread. Raises ProbeError."""
        worker = self._worker(slot)
        if worker is None:
            raise ProbeError(self._lost.get(slot) or f"{slot} is not in the cluster any more")
        try:
            return self._ray.get(worker.actor.read.remote(), timeout=timeout_s)
        except self._ray.exceptions.GetTimeoutError:
            raise ProbeError(f"{slot} did not answer within {timeout_s:g} s") from None
        except ProbeError as exc:  # RayTaskError(ProbeError) is a ProbeError too
            raise ProbeError(str(exc.args[0] if exc.args else exc)) from None
        except self._lost_errors as exc:
            raise ProbeError(self._mark_lost(worker, exc)) from None

    def _mark_lost(self, worker: _Worker, exc: BaseException) -> str:
        rex = self._ray.exceptions
        try:
            alive = any(n["NodeID"] == worker.node and n.get("Alive") for n in self._ray.nodes())
        except Exception:
            alive = False
        node_died = isinstance(exc, (rex.NodeDiedError, rex.LocalRayletDiedError)) or \
            "node has died" in str(exc) or not alive  # GCS may not know it yet
        what = "node lost" if node_died else "worker lost"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = f"{what}: {worker.slot}: {type(exc).__name__}: {first}"
        self._drop(worker, reason)
        return reason

    # -- rounds ----------------------------------------------------------------------------
    async def run_round(self, slot: Slot, argv: Sequence[str], cwd: str | Path,
                        env: dict[str, str], output_dir: str | Path, name: str,
                        object_code: str, grace_s: float, timeout_s: float,
                        stall_timeout_s: float, on_line: Callable[[str, str], None],
                        on_start: Callable[[int], None], stop: anyio.Event, kill: anyio.Event,
                        keep_folder: bool = False) -> RemoteExit:
        """Run one round on ``slot``'s node; never raises for the round's own failure.

        ``env`` is added to the node's environment (pass the config's variables, not the
        head's whole os.environ). Cancelling the caller stops the remote round (SIGTERM,
        SIGKILL after grace_s) and waits, shielded, for the node to confirm it."""
        worker = self._worker(slot)
        if worker is None:
            return RemoteExit(None, None, slot.node, None, None,
                              lost=self._lost.get(slot, f"node lost: {slot} left the cluster"))
        token = f"{name}:{uuid.uuid4().hex[:12]}"
        gen = worker.actor.run.remote(token, list(argv), str(cwd), dict(env), str(output_dir),
                                      name, object_code, grace_s, timeout_s, stall_timeout_s,
                                      keep_folder)
        seen: dict[str, Any] = {"pid": None}
        try:
            async with anyio.create_task_group() as tg:
                for event, kind in ((stop, "stop"), (kill, "kill")):
                    tg.start_soon(self._relay, worker, token, event, kind)
                try:
                    end = await self._follow(gen, seen, on_line, on_start, slot)
                except self._lost_errors as exc:  # not raised through the task group:
                    end = exc  # anyio would wrap it in an ExceptionGroup
                except self._ray.exceptions.RayTaskError as exc:
                    end = RemoteExit(None, None, slot.node, None, None, seen["pid"],
                                     error=f"node error: {str(exc).strip().splitlines()[-1]}")
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True), anyio.move_on_after(grace_s + ABORT_MARGIN_S):
                try:
                    await worker.actor.finish.remote(token, "stop")
                except self._ray.exceptions.RayError:
                    pass  # a dead worker took the round's group with it (PDEATHSIG)
            raise
        if isinstance(end, RemoteExit):
            return end
        reason = await anyio.to_thread.run_sync(self._mark_lost, worker, end)
        return RemoteExit(None, None, slot.node, None, None, seen["pid"], lost=reason)

    async def _follow(self, gen: Any, seen: dict[str, Any], on_line: Callable[[str, str], None],
                      on_start: Callable[[int], None], slot: Slot) -> RemoteExit:
        async for ref in gen:
            for message in await ref:
                kind = message[0]
                if kind == "line":
                    on_line(message[1], message[2])
                elif kind == "started":
                    seen["pid"] = message[1]
                    on_start(message[1])
                elif kind == "done":
                    _, returncode, stopped, error, result, config = message
                    return RemoteExit(returncode, stopped, slot.node, result, config,
                                      seen["pid"], error=error)
        return RemoteExit(None, None, slot.node, None, None, seen["pid"],
                          error="node error: the round ended without an exit status")

    async def _relay(self, worker: _Worker, token: str, event: anyio.Event, kind: str) -> None:
        await event.wait()
        worker.actor.signal.remote(token, kind)

    def close(self) -> None:
        """Kill this head's actors (their rounds die with them); the cluster stays up."""
        for worker in list(self._workers):
            self._drop(worker, None)
