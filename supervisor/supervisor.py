"""Wires the pieces together: a signal watcher, a dispatcher and the merger.

The dispatcher starts rounds in plan order on admitted GPUs; each round task sends what
happened on a memory object stream; the merger, the only writer of the manifest and the
datasets, records it and writes files in a worker thread so dispatching never waits.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from typing import TextIO

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from supervisor import cleanup, manifest as mf, plan, rounds
from supervisor.config import Config
from supervisor.dataset import Accumulator
from supervisor.gpus import GpuPool
from supervisor.live import LiveView
from supervisor.logs import get_logger
from supervisor.manifest import ACTIVE, DONE, RUNNING, Manifest, RoundRecord
from supervisor.merger import Merger, Message
from supervisor.resume import manifest_path
from supervisor.rounds import Outcome, RoundJob, Started

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
# While waiting for a GPU or disk space, say so again this often, so a long wait on a
# shared server never looks like a hang in the logs.
WAIT_LOG_INTERVAL_S = 600.0


class Changes:
    """Wakes the dispatcher when something it decides on has changed."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait(self, timeout: float | None = None) -> None:
        event = self._event
        with anyio.move_on_after(timeout):
            await event.wait()


class Supervisor:
    def __init__(self, config: Config, manifest: Manifest, accs: dict[str, Accumulator],
                 pool: GpuPool, handle_signals: bool = True,
                 live_stream: TextIO | None = None) -> None:
        self.config, self.manifest, self.accs, self.pool = config, manifest, accs, pool
        self.handle_signals, self.live_stream = handle_signals, live_stream
        self.watch: dict[str, tuple[RoundJob, rounds.LineSink]] = {}  # rounds running now
        self.draining = anyio.Event()
        self.stop_children = anyio.Event()
        self.changes = Changes()
        self.log = get_logger()
        self.stats = {"rounds_started": 0, "rounds_failed": 0, "rounds_retried": 0,
                      "gpu_seconds": 0.0}
        self.merger = Merger(config, manifest, accs, self.stats, self.changes.notify,
                             self._stop_starting)
        self.no_gpus = False

    # -- the objects this run works on ------------------------------------------------
    @property
    def objects(self) -> list[mf.ObjectRecord]:
        return [self.manifest.objects[code] for code in self.config.object_codes]

    def _settled(self) -> bool:
        return all(plan.terminal(o.status) and not any(
            r.status == RUNNING for r in o.rounds.values()) for o in self.objects)

    def _pick(self) -> plan.Pick | None:
        return plan.pick_next(self.objects, self.config.round_batch_size, self.config.max_rounds)

    # -- main ------------------------------------------------------------------------
    async def run(self) -> int:
        started = time.time()
        self.manifest.runs.append({"pid": os.getpid(), "host": socket.gethostname(),
                                   "argv": sys.argv, "started_at": mf.now()})
        self.log.info("run_started", exp_name=self.config.exp_name,
                      objects=len(self.config.object_codes), gpus=self.pool.gpus,
                      target=self.config.target_count_per_object,
                      manifest=str(manifest_path(self.config)))
        await self.merger.start(self.objects)
        async with anyio.create_task_group() as tg:
            if self.handle_signals:
                tg.start_soon(self._watch_signals)
            if self.live_stream is not None:
                tg.start_soon(LiveView(self, self.live_stream).run)
            send, recv = anyio.create_memory_object_stream[Message](math.inf)
            async with anyio.create_task_group() as work:
                work.start_soon(self.merger.consume, recv)
                work.start_soon(self._dispatch, send)
            tg.cancel_scope.cancel()
        self.manifest.runs[-1].update(ended_at=mf.now(), exit_code=self._exit_code())
        await self.merger.flush(drain=True, force=True)
        code = self._exit_code()
        self._summary(code, time.time() - started)
        return code

    def _exit_code(self) -> int:
        if self.merger.write_error is not None:
            return EXIT_FAILED
        if self.draining.is_set():
            return EXIT_INTERRUPTED
        if self.no_gpus or any(o.status != DONE for o in self.objects):
            return EXIT_FAILED
        return EXIT_OK

    def _summary(self, code: int, wall_s: float) -> None:
        counts = {s: sum(o.status == s for o in self.objects)
                  for s in (DONE, mf.OBJ_FAILED, mf.EXHAUSTED, ACTIVE)}
        self.log.info(
            "run_finished", exit_code=code, objects=len(self.objects),
            objects_done=counts[DONE], objects_failed=counts[mf.OBJ_FAILED],
            objects_exhausted=counts[mf.EXHAUSTED], objects_unfinished=counts[ACTIVE],
            grasps=sum(o.collected for o in self.objects),
            grasps_target=sum(o.target for o in self.objects),
            rounds_started=self.stats["rounds_started"],
            rounds_failed=self.stats["rounds_failed"],
            rounds_retried=self.stats["rounds_retried"],
            gpu_hours=round(self.stats["gpu_seconds"] / 3600, 4), wall_s=round(wall_s, 3),
            **({"error": self.merger.write_error} if self.merger.write_error else {}),
        )

    def _stop_starting(self) -> None:
        """A write failed (a full disk): start no more rounds, finish those running."""
        if not self.draining.is_set():
            self.draining.set()
            self.changes.notify()

    async def _watch_signals(self) -> None:
        # SIGHUP (a closed SSH session) drains like SIGTERM instead of killing rounds.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        """First signal: drain. Second: stop the children too."""
        name = signal.Signals(signum).name
        if not self.draining.is_set():
            self.draining.set()
            self.log.info("drain_started", signal=name,
                          running=sum(self.pool.in_flight.values()))
        elif not self.stop_children.is_set():
            self.stop_children.set()
            self.log.info("stop_children", signal=name, grace_s=self.config.timeouts.grace_s)
        self.changes.notify()

    # -- dispatcher ------------------------------------------------------------------
    async def _dispatch(self, send: MemoryObjectSendStream[Message]) -> None:
        async with send, anyio.create_task_group() as rounds_tg:
            while not self.draining.is_set() and not self._settled():
                if self._pick() is None:
                    await self.changes.wait()
                    continue
                if not await self._wait_for_disk():
                    break
                gpu = await self._acquire_gpu(self._failed_on(self._pick()))
                if gpu is None:
                    break
                pick = self._pick()
                if pick is None:
                    self.pool.release(gpu)
                    continue
                rounds_tg.start_soon(self._round, self._start(pick, gpu), send.clone())

    async def _wait_for_disk(self) -> bool:
        """Wait while a folder rounds write to has less than disk.min_free_gib free."""
        logged = -math.inf
        while not self.draining.is_set():
            short = cleanup.short_of_space(self.config)
            if short is None:
                return True
            if time.monotonic() - logged >= WAIT_LOG_INTERVAL_S:
                logged = time.monotonic()
                self.log.warning("disk_wait", reason=short,
                                 poll_interval_s=self.config.gpu.poll_interval_s)
            await self.changes.wait(self.config.gpu.poll_interval_s)
        return False

    def _failed_on(self, pick: plan.Pick | None) -> frozenset[int]:
        """The GPUs where the round to start next has failed before."""
        if pick is None or pick.new:
            return frozenset()
        rnd = self.manifest.objects[pick.object_code].rounds[pick.round_id]
        return frozenset(f["gpu"] for f in rnd.failures if f.get("gpu") is not None)

    async def _acquire_gpu(self, avoid: frozenset[int] = frozenset()) -> int | None:
        logged = -math.inf
        while not self.draining.is_set():
            readings = await anyio.to_thread.run_sync(self.pool.poll)
            admission = self.pool.admit(avoid, readings)
            for gpu, reason in admission.lost.items():
                self.log.warning("gpu_lost", gpu=gpu, reason=reason)
            if admission.gpu is not None:
                return admission.gpu
            if not self.pool.gpus:
                self.no_gpus = True
                self.log.error("no_gpus_left", reasons=self.pool.dead)
                return None
            if admission.short and time.monotonic() - logged >= WAIT_LOG_INTERVAL_S:
                logged = time.monotonic()
                self.log.info("gpu_wait", short={str(g): r for g, r in admission.short.items()},
                              busy=admission.busy,
                              poll_interval_s=self.config.gpu.poll_interval_s)
            await self.changes.wait(self.config.gpu.poll_interval_s)
        return None

    def _start(self, pick: plan.Pick, gpu: int) -> RoundJob:
        obj = self.manifest.objects[pick.object_code]
        self.manifest.touch(obj.code)
        if pick.new:
            obj.rounds[pick.round_id] = RoundRecord(
                pick.round_id,
                plan.round_name(self.config.exp_name, obj.code, pick.round_id),
                plan.round_seed(self.config.seed_base, obj.index, pick.round_id),
            )
        rnd = obj.rounds[pick.round_id]
        rnd.status, rnd.gpu, rnd.started_at = RUNNING, gpu, mf.now()
        rnd.attempts += 1
        rnd.pid = rnd.exit_code = rnd.finished_at = None
        self.stats["rounds_started"] += 1
        return RoundJob(obj.code, rnd.round_id, rnd.name, rnd.seed, gpu, rnd.attempts)

    async def _round(self, job: RoundJob, send: MemoryObjectSendStream[Message]) -> None:
        async with send:
            try:
                outcome = await rounds.run_round(
                    self.config, job, self.stop_children,
                    lambda pid: send.send_nowait(Started(job, pid)), self.watch)
            except Exception as exc:  # a bug must cost one round, not the run
                self.log.exception("round_error", **job.fields())
                outcome = Outcome(job, rounds.FAILED, time.time(), time.time(),
                                  reason=f"supervisor error: {type(exc).__name__}: {exc}")
            finally:
                self.pool.release(job.gpu)
                self.changes.notify()
            await send.send(outcome)
