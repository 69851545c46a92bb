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
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from supervisor import cleanup, dataset, manifest as mf, plan, rounds
from supervisor.config import Config
from supervisor.dataset import Accumulator
from supervisor.faults import crash_point
from supervisor.gpus import GpuPool
from supervisor.live import LiveView
from supervisor.logs import get_logger
from supervisor.manifest import (
    ACTIVE, DISCARDED, DONE, FAILED, FINISHED, HAS_GRASPS, INTERRUPTED, MERGED, PENDING,
    RUNNING, Manifest, RoundRecord,
)
from supervisor.resume import manifest_path
from supervisor.rounds import Outcome, RoundJob, Started

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
Message = Started | Outcome


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
        self.unwritten: dict[str, int] = {}  # object -> rounds held but not in final.npz
        # done objects -> (grasps used per round, rounds merged by completing it)
        self.finals: dict[str, tuple[dict[int, int], list[RoundRecord]]] = {}
        self.to_clean: list[tuple[str, list[str]]] = []  # (object, round names)
        # final.npz contents waiting to be written, with the rounds they merge
        self.pending: dict[str, tuple[dict, list[RoundRecord]]] = {}
        self.write_error: str | None = None
        self.no_gpus = False
        self.dirty = False  # the manifest changed since it was last written
        self.stats = {"rounds_started": 0, "rounds_failed": 0, "rounds_retried": 0,
                      "gpu_seconds": 0.0}

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
        for obj in self.objects:
            self._settle(obj)
        await self._flush(drain=False, force=True)
        async with anyio.create_task_group() as tg:
            if self.handle_signals:
                tg.start_soon(self._watch_signals)
            if self.live_stream is not None:
                tg.start_soon(LiveView(self, self.live_stream).run)
            send, recv = anyio.create_memory_object_stream[Message](math.inf)
            async with anyio.create_task_group() as work:
                work.start_soon(self._merge, recv)
                work.start_soon(self._dispatch, send)
            tg.cancel_scope.cancel()
        self.manifest.runs[-1].update(ended_at=mf.now(), exit_code=self._exit_code())
        await self._flush(drain=True, force=True)
        code = self._exit_code()
        self._summary(code, time.time() - started)
        return code

    def _exit_code(self) -> int:
        if self.write_error is not None:
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
            **({"error": self.write_error} if self.write_error else {}),
        )

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
                gpu = await self._acquire_gpu()
                if gpu is None:
                    break
                pick = self._pick()
                if pick is None:
                    self.pool.release(gpu)
                    continue
                rounds_tg.start_soon(self._round, self._start(pick, gpu), send.clone())

    async def _wait_for_disk(self) -> bool:
        """Wait while a folder rounds write to has less than disk.min_free_gib free."""
        logged = False
        while not self.draining.is_set():
            short = cleanup.short_of_space(self.config)
            if short is None:
                return True
            if not logged:
                logged = True
                self.log.warning("disk_wait", reason=short,
                                 poll_interval_s=self.config.gpu.poll_interval_s)
            await self.changes.wait(self.config.gpu.poll_interval_s)
        return False

    async def _acquire_gpu(self) -> int | None:
        logged = False
        while not self.draining.is_set():
            admission = self.pool.admit()
            for gpu, reason in admission.lost.items():
                self.log.warning("gpu_lost", gpu=gpu, reason=reason)
            if admission.gpu is not None:
                return admission.gpu
            if not self.pool.gpus:
                self.no_gpus = True
                self.log.error("no_gpus_left", reasons=self.pool.dead)
                return None
            if admission.short and not logged:
                logged = True
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

    # -- merger ----------------------------------------------------------------------
    async def _merge(self, recv: MemoryObjectReceiveStream[Message]) -> None:
        async with recv:
            async for message in recv:
                self._handle(message)
                while True:  # take what else is queued, then write once
                    try:
                        self._handle(recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._flush(drain=False)
                self.changes.notify()
        await self._flush(drain=True)

    def _handle(self, message: Message) -> None:
        obj = self.manifest.objects[message.job.object_code]
        rnd = obj.rounds[message.job.round_id]
        self.manifest.touch(obj.code)
        self.dirty = True
        if isinstance(message, Started):
            rnd.pid = message.pid
            return
        out = message
        rnd.finished_at, rnd.exit_code, rnd.pid = mf.now(), out.exit_code, None
        self.stats["gpu_seconds"] += out.finished_at - out.started_at
        fields = out.job.fields()
        if out.kind == rounds.OK:
            rnd.produced, rnd.accepted, rnd.reason = out.produced, out.accepted, None
            if obj.status != ACTIVE:
                rnd.status, rnd.used = DISCARDED, 0
                self.log.info("round_discarded", reason=f"object {obj.status}", **fields)
                self.to_clean.append((obj.code, [rnd.name]))
            else:
                rnd.status = FINISHED
                assert out.columns is not None
                self.accs[obj.code].add(rnd.round_id, out.columns)
                self.unwritten[obj.code] = self.unwritten.get(obj.code, 0) + 1
                obj.consecutive_failures = 0
        elif out.kind == rounds.INTERRUPTED:
            rnd.status, rnd.attempts, rnd.reason = INTERRUPTED, rnd.attempts - 1, out.reason
            self.log.info("round_interrupted", **fields)
        else:
            self._failed(obj, rnd, out)
        self._settle(obj)

    def _failed(self, obj: mf.ObjectRecord, rnd: RoundRecord, out: Outcome) -> None:
        self.stats["rounds_failed"] += 1
        rnd.reason = out.reason
        rnd.failures.append({"attempt": rnd.attempts, "reason": out.reason, "gpu": rnd.gpu,
                             "exit_code": out.exit_code, "at": mf.now(),
                             "duration_s": round(out.finished_at - out.started_at, 3)})
        retry = rnd.attempts < self.config.retry.max_attempts and obj.status == ACTIVE
        self.log.warning("round_failed", attempt=rnd.attempts, reason=out.reason,
                         exit_code=out.exit_code, will_retry=retry, tail=out.tail[-5:],
                         **out.job.fields())
        if retry:
            rnd.status = PENDING
            self.stats["rounds_retried"] += 1
            self.log.info("round_retry", attempt=rnd.attempts + 1,
                          max_attempts=self.config.retry.max_attempts, **out.job.fields())
            return
        rnd.status = FAILED
        if obj.status == ACTIVE:
            obj.consecutive_failures += 1

    def _settle(self, obj: mf.ObjectRecord) -> None:
        if obj.status != ACTIVE:
            return
        self.manifest.touch(obj.code)
        status = plan.settle(obj, self.config.max_rounds,
                             self.config.retry.max_consecutive_failed_rounds)
        if status == DONE:
            self._complete(obj)
        elif status != ACTIVE:
            obj.status = status
            obj.reason = (f"{obj.consecutive_failures} consecutive rounds failed"
                          if status == mf.OBJ_FAILED else
                          f"max_rounds = {self.config.max_rounds} reached")
            self.log.error("object_failed", object_code=obj.code, status=status,
                           reason=obj.reason, collected=plan.collected(obj), target=obj.target)

    def _complete(self, obj: mf.ObjectRecord) -> None:
        comp = plan.completion(obj)
        assert comp.last_round is not None
        newly_merged = []
        for rid, rnd in obj.rounds.items():
            if rnd.status not in HAS_GRASPS:
                continue
            if rid > comp.last_round:
                rnd.status, rnd.used = DISCARDED, 0
                self.log.info("round_discarded", reason="object done", round=rnd.name,
                              object_code=obj.code, gpu=rnd.gpu)
                continue
            if rnd.status == FINISHED:
                newly_merged.append(rnd)
            rnd.status, rnd.used = MERGED, comp.used.get(rid, 0)
        obj.status, obj.collected = DONE, obj.target
        self.finals[obj.code] = (comp.used, newly_merged)
        self.log.info("object_done", object_code=obj.code, collected=obj.target,
                      rounds_used=len(comp.used), last_round=comp.last_round)

    def _due_writes(self, drain: bool) -> None:
        """Queue final.npz writes: completed objects, and every merge_stride rounds."""
        for code, (used, merged) in self.finals.items():
            self.pending[code] = (self.accs.pop(code).build(used), merged)
            self.unwritten.pop(code, None)
            self.to_clean.append((code, [r.name for r in self.manifest.objects[code].rounds
                                         .values() if r.status not in (RUNNING, PENDING,
                                                                       INTERRUPTED)]))
        self.finals = {}
        for code, count in list(self.unwritten.items()):
            if count and (drain or count >= self.config.merge_stride):
                obj = self.manifest.objects[code]
                self.manifest.touch(code)
                merged = [r for r in obj.rounds.values() if r.status == FINISHED]
                for rnd in merged:
                    rnd.status = MERGED
                columns = self.accs[code].build()
                obj.collected = len(columns["round_id"])
                earlier = self.pending.get(code, (None, []))[1]
                self.pending[code] = (columns, earlier + merged)
                self.unwritten[code] = 0

    async def _flush(self, drain: bool, force: bool = False) -> None:
        """Manifest first, then datasets, then cleanup: resume relies on this order.

        A failed write (a full disk) keeps what was not written for the next flush and
        stops new rounds; the files on disk stay as they were.
        """
        self._due_writes(drain)
        if not (self.pending or force or self.dirty):
            return
        try:
            self.dirty = False
            data = self.manifest.dumps()
            await anyio.to_thread.run_sync(mf.save, manifest_path(self.config), data)
            crash_point("flush.after_manifest")
            for code in list(self.pending):
                columns, merged = self.pending[code]
                path = dataset.final_path(self.config.exp_dir, code)
                await anyio.to_thread.run_sync(dataset.write, path, columns)
                del self.pending[code]
                for rnd in merged:
                    self.log.info("round_merged", round=rnd.name, object_code=code,
                                  gpu=rnd.gpu, accepted=rnd.accepted, produced=rnd.produced,
                                  collected=len(columns["round_id"]))
            crash_point("flush.after_datasets")
        except OSError as exc:
            self.dirty = True
            self._write_failed(exc)
            return
        if not self.config.keep_intermediate:
            for code, names in self.to_clean:
                await anyio.to_thread.run_sync(cleanup.clean_rounds, self.config, code, names)
        self.to_clean = []

    def _write_failed(self, exc: OSError) -> None:
        first = self.write_error is None
        self.write_error = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
        self.log.error("write_failed", error=self.write_error, errno=exc.errno,
                       pending=sorted(self.pending), will_drain=first)
        if first and not self.draining.is_set():
            self.draining.set()
            self.changes.notify()
