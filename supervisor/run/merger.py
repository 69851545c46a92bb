"""The merger: the only writer of the journal, the snapshot, the datasets and cleanup.

It turns what round tasks report into events for the state machine and carries out the
effects, in an order that a kill anywhere cannot break: events are journaled (fsync)
before the files they allow to change; final.npz is written before the event that
records it; round folders are removed only after that event is durable.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from supervisor.run import cleanup
from supervisor.dataset import final, validation
from supervisor.core import events as ev, plan
from supervisor.storage import paths
from supervisor.config.schema import Config
from supervisor.dataset.final import Accumulator
from supervisor.storage.faults import crash_point
from supervisor.logs import get_logger
from supervisor.dataset.dedup import DedupIndex
from supervisor.config.schema import DedupSettings
from supervisor.core.records import ObjectRecord, ObjectStatus, RoundStatus, now
from supervisor.run.rounds import FAILED, INTERRUPTED, OK, OUT_OF_MEMORY, Outcome, Started
from supervisor.run.validation import Validated, ValidationFailed, Validations
from supervisor.core.state import (
    CleanRounds, Effect, KillOrphans, Log, StopRounds, StopRun, WriteDataset,
)
from supervisor.storage.store import Store

Message = Started | Outcome | Validated | ValidationFailed


class Merger:
    def __init__(self, config: Config, store: Store, accs: dict[str, Accumulator],
                 on_change: Callable[[], None], on_stop_rounds: Callable[[tuple[str, ...]], None],
                 on_stop_run: Callable[[str], None]) -> None:
        self.config, self.store, self.accs = config, store, accs
        self.state = store.state
        self.on_change, self.on_stop_rounds, self.on_stop_run = (
            on_change, on_stop_rounds, on_stop_run)
        self.log = get_logger()
        self.writes: dict[str, WriteDataset] = {}
        self.judges: dict[str, Judge] = {}  # [dedup]: per object, rounds judged in order
        self.to_clean: list[CleanRounds] = []
        self.write_error: str | None = None
        # the packer commits its measurements too: appends stay in order, and none falls
        # between a snapshot's encoding and the journal's truncation
        self.journal_lock = anyio.Lock()
        self.validations: Validations | None = None  # [validate]: where produced rounds go

    # -- effects -------------------------------------------------------------------------
    def record(self, event: ev.Event) -> None:
        self.carry_out(self.store.record(event))

    def carry_out(self, effects: list[Effect], tail: list[str] | None = None) -> None:
        for effect in effects:
            if isinstance(effect, Log):
                extra = {"tail": tail} if tail and effect.event == "round_failed" else {}
                getattr(self.log, effect.level)(effect.event, **effect.fields, **extra)
            elif isinstance(effect, WriteDataset):
                earlier = self.writes.get(effect.code)
                if earlier is None or not earlier.final:
                    self.writes[effect.code] = effect
            elif isinstance(effect, CleanRounds):
                self.to_clean.append(effect)
            elif isinstance(effect, StopRounds):
                self.on_stop_rounds(effect.names)
            elif isinstance(effect, StopRun):
                self.log.error("run_stopped", reason=effect.reason)
                self.on_stop_run(effect.reason)
            elif isinstance(effect, KillOrphans):  # only at start-up, see resume
                raise AssertionError("KillOrphans outside start-up")

    # -- messages from round tasks -------------------------------------------------------
    def handle(self, message: Message) -> None:
        if isinstance(message, (Validated, ValidationFailed)):
            self.validated(message)
            return
        job = message.job
        if isinstance(message, Started):
            self.record(ev.RoundSpawned(job.object_code, job.round_id, message.pid,
                                        message.proc_start))
            where = job.placed()
            if "job_id" in where:  # a scheduler's job: its id, then its node and GPU
                self.record(ev.RoundPlaced(job.object_code, job.round_id, where["job_id"],
                                           where.get("node"), where.get("gpu")))
            return
        out, duration = message, message.finished_at - message.started_at
        if out.kind == OK:
            assert out.columns is not None
            obj = self.state.objects[job.object_code]
            if obj.status != ObjectStatus.DONE:  # held for final.npz, or for a revival
                self.accs.setdefault(job.object_code, Accumulator()).add(job.round_id,
                                                                         out.columns)
            self.record(ev.RoundProduced(job.object_code, job.round_id, out.produced,
                                         out.accepted, now(), duration, out.gpu_mib))
            self.to_validate(job.object_code, job.round_id, out.produced)
        elif out.kind == INTERRUPTED:
            self.record(ev.RoundInterrupted(job.object_code, job.round_id,
                                            out.reason or "interrupted", now(), duration))
        elif out.kind == OUT_OF_MEMORY:
            self.record(ev.RoundOutOfMemory(
                job.object_code, job.round_id, job.gpu, out.reason or "out of memory", now(),
                duration, out.alone, out.free_mib, out.estimate_mib))
        else:
            assert out.kind == FAILED
            self.carry_out(self.store.record(ev.RoundFailed(
                job.object_code, job.round_id, job.gpu, out.reason or "failed", now(),
                duration, out.exit_code)), tail=out.tail[-5:])
        self.judge(job.object_code)
        if out.on_ended is not None:
            out.on_ended(out)

    # -- [validate] ----------------------------------------------------------------------
    def to_validate(self, code: str, round_id: int, produced: int | None) -> None:
        """A round produced (or found produced at start-up) waits for its validation."""
        if self.state.round_of(code, round_id).status != RoundStatus.VALIDATING:
            return
        cols = self.accs[code].rounds[round_id]
        if not len(cols["item_index"]):  # every grasp filtered: nothing to validate
            self.record(ev.RoundValidated(code, round_id, 0, {}, now()))
            return
        assert self.validations is not None
        self.validations.submit(code, round_id, cols["item_index"], produced or 0)

    def validated(self, message: Validated | ValidationFailed) -> None:
        code, rid = message.code, message.round_id
        if isinstance(message, ValidationFailed):
            self.record(ev.ValidationStopped(code, rid, message.reason))
            return
        if self.state.round_of(code, rid).status != RoundStatus.VALIDATING:
            return  # its object was done meanwhile
        acc = self.accs[code]
        acc.rounds[rid] = validation.apply(acc.rounds[rid], message.items, message.figures)
        self.record(ev.RoundValidated(code, rid, int(message.figures[validation.PASSED].sum()),
                                      validation.failed_by(message.figures), now()))
        self.judge(code)

    # -- [dedup] -------------------------------------------------------------------------
    def judge(self, code: str) -> None:
        """Judge the rounds whose earlier rounds have all settled, in round order: a grasp
        near one kept before it (same object) is dropped, so the dataset is the same
        whatever order rounds finish in."""
        if not self.config.dedup.enabled or code not in self.accs:
            return
        acc, obj = self.accs[code], self.state.objects[code]
        judge = self.judges.get(code)
        if judge is None:
            judge = self.judges[code] = Judge.start(self.config.dedup, acc, obj)
        while judge.next_rid in obj.rounds:
            rnd = obj.rounds[judge.next_rid]
            if rnd.status == RoundStatus.FINISHED and rnd.unique is None:
                if rnd.round_id not in acc.rounds:
                    return
                cols = acc.rounds[rnd.round_id]
                keep = judge.index.admit(cols)
                acc.rounds[rnd.round_id] = {k: v[keep] for k, v in cols.items()}
                self.record(ev.RoundDeduped(code, rnd.round_id, int(keep.sum())))
            elif rnd.status not in (RoundStatus.FAILED, RoundStatus.DISCARDED,
                                    RoundStatus.MERGED, RoundStatus.FINISHED):
                return
            judge.next_rid += 1

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
                await self.flush()
                self.on_change()
        await self.flush(drain=True)

    # -- writing -------------------------------------------------------------------------
    async def commit(self) -> None:
        """Append what was recorded since the last commit to the journal (fsync)."""
        async with self.journal_lock:
            lines = self.store.take_queued()
            if lines:
                await anyio.to_thread.run_sync(self.store.journal.append, lines)

    async def flush(self, drain: bool = False, snapshot: bool = False) -> None:
        """Journal, then datasets (each recorded by an event), journal, cleanup, snapshot.

        A failed write (a full disk) keeps what was not written for the next flush and
        stops new rounds; the files on disk stay as they were.
        """
        if drain:
            for code, n in self.state.unwritten.items():
                if n and self.state.objects[code].status != ObjectStatus.DONE:
                    self.writes.setdefault(code, WriteDataset(code, None, final=False))
        try:
            await self.commit()
            for code in list(self.writes):
                await self._write_dataset(self.writes.pop(code))
            crash_point("flush.after_datasets")
            await self.commit()
            if snapshot or drain or self.store.snapshot_due():
                async with self.journal_lock:
                    data = self.store.encode_snapshot()
                    await anyio.to_thread.run_sync(self.store.write_snapshot, data)
        except OSError as exc:
            self.write_failed(exc)
            return
        if not self.config.keep_intermediate:
            for clean in self.to_clean:
                await anyio.to_thread.run_sync(cleanup.clean_rounds, self.config, clean.code,
                                               clean.names)
        self.to_clean = []

    async def _write_dataset(self, write: WriteDataset) -> None:
        acc = self.accs.get(write.code) or Accumulator()
        used = write.used
        if used is None:  # a stride or drain write: the rounds held, validated, judged...
            obj = self.state.objects[write.code]
            held = {rid: len(cols["round_id"]) for rid, cols in acc.rounds.items()
                    if obj.rounds[rid].status != RoundStatus.VALIDATING and (
                        not self.config.dedup.enabled or obj.rounds[rid].unique is not None)}
            used = plan.first_rows(held, obj.target)  # ...never more than the target
        columns = acc.build(used)
        path = paths.final(self.config.exp_dir, write.code)
        try:
            digest = await anyio.to_thread.run_sync(final.write, path, columns)
        except OSError:
            self.writes[write.code] = write  # tried again at the next flush
            raise
        crash_point("flush.after_dataset")
        stat = os.stat(path)
        rows = len(columns["round_id"])
        if write.final:
            self.accs.pop(write.code, None)
            self.judges.pop(write.code, None)
        self.record(ev.DatasetWritten(write.code, dict(used), rows, stat.st_size,
                                      stat.st_mtime_ns, digest))
        for name in acc.partial_keys:
            self.log.warning("key_dropped", object_code=write.code, key=name, reason=(
                "not saved by every round of this object: kept as NaN where missing"))
        acc.partial_keys.clear()

    def write_failed(self, exc: OSError) -> None:
        first = self.write_error is None
        self.write_error = f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": ")
        self.log.error("write_failed", error=self.write_error, errno=exc.errno,
                       pending=sorted(self.writes), will_drain=first)
        if first:
            self.on_stop_run(f"a write failed: {self.write_error}")

    def summary(self) -> dict[str, Any]:
        s = self.state
        return {"rounds_started": s.stats["rounds_started"],
                "rounds_failed": s.stats["rounds_failed"],
                "rounds_retried": s.stats["rounds_retried"],
                "gpu_hours": round(s.stats["gpu_seconds"] / 3600, 4)}



class Judge:
    """One object's near-duplicate index over the grasps kept so far, and the next round
    to judge."""

    def __init__(self, index: DedupIndex, next_rid: int) -> None:
        self.index, self.next_rid = index, next_rid

    @classmethod
    def start(cls, settings: DedupSettings, acc: Accumulator, obj: ObjectRecord) -> Judge:
        """From the rounds already judged: those in final.npz, then those judged since."""
        index = DedupIndex(settings)
        rid = 0
        while rid in obj.rounds:
            rnd = obj.rounds[rid]
            judged = rnd.status == RoundStatus.MERGED or (
                rnd.status == RoundStatus.FINISHED and rnd.unique is not None)
            if judged and rid in acc.rounds:
                index.add(acc.rounds[rid])
            elif rnd.status not in (RoundStatus.FAILED, RoundStatus.DISCARDED):
                break
            rid += 1
        return cls(index, rid)
