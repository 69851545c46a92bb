"""The merger: the only writer of manifest.json and the datasets.

It records what each round task reports (started, finished, failed, interrupted), decides
retries and when an object is done, and writes: the manifest first, then final.npz,
then removes round folders, so that a kill anywhere leaves a state resume can complete.
Blocking file work runs in a worker thread so the dispatcher never waits for a merge.
"""

from __future__ import annotations

from typing import Any, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from supervisor import cleanup, dataset, manifest as mf, plan, rounds
from supervisor.config import Config
from supervisor.dataset import Accumulator
from supervisor.faults import crash_point
from supervisor.logs import get_logger
from supervisor.manifest import (
    ACTIVE, DISCARDED, DONE, FAILED, FINISHED, HAS_GRASPS, INTERRUPTED, MERGED, PENDING,
    RUNNING, Manifest, RoundRecord,
)
from supervisor.resume import manifest_path
from supervisor.rounds import Outcome, Started

Message = Started | Outcome


class Merger:
    def __init__(self, config: Config, manifest: Manifest, accs: dict[str, Accumulator],
                 stats: dict[str, Any], on_change: Callable[[], None],
                 on_write_failed: Callable[[], None]) -> None:
        self.config, self.manifest, self.accs, self.stats = config, manifest, accs, stats
        self.on_change, self.on_write_failed = on_change, on_write_failed
        self.log = get_logger()
        self.unwritten: dict[str, int] = {}  # object -> rounds held but not in final.npz
        # done objects -> (grasps used per round, rounds merged by completing it)
        self.finals: dict[str, tuple[dict[int, int], list[RoundRecord]]] = {}
        self.to_clean: list[tuple[str, list[str]]] = []  # (object, round names)
        # final.npz contents waiting to be written, with the rounds they merge
        self.pending: dict[str, tuple[dict, list[RoundRecord]]] = {}
        self.write_error: str | None = None
        self.dirty = False  # the manifest changed since it was last written

    async def start(self, objects: list[mf.ObjectRecord]) -> None:
        """Take over the state resume rebuilt, settle every object, write it once."""
        for obj in objects:
            # Rounds re-read from their folders still have to reach final.npz.
            reloaded = sum(r.status == FINISHED for r in obj.rounds.values())
            if reloaded and obj.code in self.accs:
                self.unwritten[obj.code] = reloaded
            self.settle(obj)
            if obj.status == DONE:  # a kill during cleanup may have left folders behind
                self.to_clean.append((obj.code, [r.name for r in obj.rounds.values()]))
        await self.flush(drain=False, force=True)

    async def consume(self, recv: MemoryObjectReceiveStream[Message]) -> None:
        """Record every message until all senders have closed; write after each batch."""
        async with recv:
            async for message in recv:
                self.handle(message)
                while True:  # take what else is queued, then write once
                    try:
                        self.handle(recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self.flush(drain=False)
                self.on_change()
        await self.flush(drain=True)

    def handle(self, message: Message) -> None:
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
        self.settle(obj)

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

    def settle(self, obj: mf.ObjectRecord) -> None:
        """Decide whether ``obj`` is done, failed or exhausted after a change."""
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

    async def flush(self, drain: bool, force: bool = False) -> None:
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
        if first:
            self.on_write_failed()
