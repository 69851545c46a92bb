"""Wires the pieces together: a signal watcher, a dispatcher and the merger.

The dispatcher asks the plan which round each free, healthy GPU should run, checks its
memory, records the start through the state machine and spawns a round task; each round
task sends what happened on a memory object stream to the merger, the only writer of
files. Signals: the first drains (no round starts after it, whatever the dispatcher was
awaiting), the second stops the rounds (SIGTERM, SIGKILL after grace_s), the third
SIGKILLs them at once.
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from typing import Any, TextIO

import anyio
from anyio.abc import TaskGroup

from supervisor.core import events as ev, packing
from supervisor.storage import paths
from supervisor.run import rounds
from supervisor.backends.base import Backend
from supervisor.backends.local import LocalBackend
from supervisor.config.schema import Config
from supervisor.dataset.final import Accumulator
from supervisor.run.dispatcher import Changes, Dispatcher
from supervisor.gpus.pool import GpuPool
from supervisor.run.live import LiveView, Snapshot
from supervisor.logs import get_logger
from supervisor.run.merger import Merger, Message
from supervisor.run.packer import Packer
from supervisor.run.validation import Validations
from supervisor.core.records import GpuRecord, GpuStatus, ObjectStatus, RoundStatus, now
from supervisor.run.rounds import Control, RoundJob
from supervisor.gpus.sampler import Sampler
from supervisor.core.records import removed, validated
from supervisor.storage.store import Store

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


def _tag(rec: GpuRecord | None) -> str:
    """What the live view says beside a GPU: its health when not healthy, its level."""
    if rec is None:
        return ""
    if rec.status != GpuStatus.HEALTHY:
        return rec.status.value
    if rec.level is None:
        return ""
    text = packing.shown(rec.gains, rec.level, rec.retest_from, rec.worse)
    return f"{packing.held(rec.level, rec.retest_from)} at once" + (f", {text}" if text else "")
# After the second signal the process exits within grace_s + this, whatever a child or
# NVML does (a child stuck in the kernel ignores even SIGKILL).
EXIT_MARGIN_S = 4.5


class Supervisor:
    """One run: the signal watcher, the dispatcher, the merger, the sampler and the live
    view in one task group, and the run's summary and exit code."""

    def __init__(self, config: Config, store: Store, accs: dict[str, Accumulator],
                 pool: GpuPool, handle_signals: bool = True,
                 live_stream: TextIO | None = None, backend: Backend | None = None) -> None:
        self.config, self.store, self.pool = config, store, pool
        self.backend: Backend = backend or LocalBackend(pool.probe)
        self.state = store.state
        self.handle_signals, self.live_stream = handle_signals, live_stream
        self.signals = 0
        self.stop_reason: str | None = None
        self.tg: TaskGroup | None = None  # the run's task group, once it runs
        self.log = get_logger()
        self.started = time.time()
        self.grasps_before = self._grasps()  # a resumed run's, delivered before it
        changes = Changes()
        self.merger = Merger(config, store, accs, changes.notify, self._stop_rounds,
                             self.stop_run)
        self.dispatcher = Dispatcher(config, self.state, pool, self.backend, self.merger,
                                     changes)
        self.packer = Packer(config, self.state, pool, self.merger, self.dispatcher.watch,
                             changes.notify) \
            if config.gpu.max_rounds_per_gpu == "auto" else None
        self.validations = Validations(
            config, self.state, len(pool.gpus) if self.backend.kind == "local" else 0) \
            if config.validate.enabled else None
        self.merger.validations = self.validations

    @property
    def watch(self) -> dict[str, tuple[RoundJob, rounds.LineSink]]:
        """The rounds running now."""
        return self.dispatcher.watch

    @property
    def controls(self) -> dict[str, Control]:
        return self.dispatcher.controls

    def _stop_rounds(self, names: tuple[str, ...]) -> None:
        self.dispatcher.stop_rounds(names)

    # -- main ------------------------------------------------------------------------
    async def run(self) -> int:
        self.log.info("run_started", exp_name=self.config.exp_name,
                      objects=len(self.state.order), backend=self.backend.kind,
                      gpus=self.pool.gpus,
                      target=self.config.target_count_per_object,
                      manifest=str(paths.manifest(self.config.exp_dir)))
        await self.merger.flush(snapshot=True)
        async with anyio.create_task_group() as tg:
            if self.handle_signals:
                tg.start_soon(self._watch_signals)
            if self.backend.dynamic:
                tg.start_soon(self.dispatcher.follow_gpus)
            if self.packer is not None:
                tg.start_soon(self.packer.run)
            serve = getattr(self.backend, "serve", None)
            if serve is not None:  # the backend's own watch (Slurm: one squeue a poll)
                tg.start_soon(serve)
            self.tg = tg
            if self.live_stream is not None:
                tg.start_soon(LiveView(self.snapshot, self.live_stream).run)
            tg.start_soon(Sampler(
                self.config.exp_dir, self.pool.probe, gpus=lambda: self.pool.gpus,
                rounds=self._running_pids,
                interval_s=self.config.gpu.sample_interval_s, observe=self.pool.observe).run)
            send, recv = anyio.create_memory_object_stream[Message](math.inf)
            async with anyio.create_task_group() as work:
                work.start_soon(self.merger.consume, recv)
                if self.validations is not None:
                    work.start_soon(self.validations.run, send.clone())
                    self._validate_held()
                work.start_soon(self._dispatch, send)
            tg.cancel_scope.cancel()
        await self.merger.flush(drain=True)
        code = self._exit_code()
        self.merger.record(ev.SupervisorStopped(now(), code))
        await self.merger.flush(snapshot=True)
        code = self._exit_code()  # a failed last write makes it 1
        self._summary(code)
        return code

    async def _dispatch(self, send: Any) -> None:
        """Rounds until the state is settled or the run stops; then validation stops too
        (what is left to validate is validated by the next run)."""
        await self.dispatcher.run(send)
        if self.validations is not None:
            self.validations.finish()

    def _validate_held(self) -> None:
        """Rounds a run before produced and did not see validated (resume)."""
        for code in self.state.order:
            for rnd in list(self.state.objects[code].rounds.values()):
                if rnd.status == RoundStatus.VALIDATING and code in self.merger.accs \
                        and rnd.round_id in self.merger.accs[code].rounds:
                    self.merger.to_validate(code, rnd.round_id, rnd.produced)

    def _exit_code(self) -> int:
        if self.merger.write_error is not None or self.stop_reason is not None:
            return EXIT_FAILED
        if self.signals:
            return EXIT_INTERRUPTED
        objects = self.state.objects
        if self.dispatcher.no_gpus or any(objects[c].status != ObjectStatus.DONE for c in self.state.order):
            return EXIT_FAILED
        return EXIT_OK

    def _summary(self, code: int) -> None:
        s, by = self.state, self.state.objects_by_status
        gone = [removed(s.objects[c]) for c in s.order]
        grasps = self._grasps()
        # Done means delivered: an object decided done whose final.npz could not be
        # written (a full disk) is not.
        unwritten = sum(1 for c in s.order if s.objects[c].status == ObjectStatus.DONE
                        and s.objects[c].collected < s.objects[c].target)
        error = self.merger.write_error or self.stop_reason or (
            "no GPU left (every GPU lost or quarantined)" if self.dispatcher.no_gpus else None)
        self.log.info(
            "run_finished", exit_code=code, objects=len(s.order),
            objects_done=by[ObjectStatus.DONE] - unwritten,
            objects_failed=by[ObjectStatus.FAILED],
            objects_exhausted=by[ObjectStatus.EXHAUSTED],
            objects_unfinished=by[ObjectStatus.ACTIVE] + unwritten,
            grasps=grasps, grasps_this_run=max(0, grasps - self.grasps_before),
            removed_by_filter=sum(f for f, _ in gone),
            removed_as_duplicates=sum(d for _, d in gone),
            grasps_target=sum(s.objects[c].target for c in s.order),
            gpus_quarantined=[g for g, r in s.gpus.items()
                              if r.status == GpuStatus.QUARANTINED],
            wall_s=round(time.time() - self.started, 3), **self.merger.summary(),
            **self._validation_summary(),
            **({"error": error} if error else {}),
        )

    def _validation_summary(self) -> dict[str, Any]:
        """[validate]: grasps validated, passed and failed by reason (the experiment's),
        per object, and the rounds left to validate."""
        if self.validations is None:
            return {}
        per_object = {}
        for code in self.state.order:
            checked, passed, reasons = validated(self.state.objects[code])
            per_object[code] = {"validated": checked, "passed": passed, "failed_by": reasons}
        reasons_all: dict[str, int] = {}
        for o in per_object.values():
            for k, n in o["failed_by"].items():
                reasons_all[k] = reasons_all.get(k, 0) + n
        return {"validation": {
            "validated": sum(o["validated"] for o in per_object.values()),
            "passed": sum(o["passed"] for o in per_object.values()),
            "failed_by": dict(sorted(reasons_all.items())),
            "rounds_to_validate": self.state.validating, "per_object": per_object}}

    def _grasps(self) -> int:
        """The experiment's grasps in final.npz files."""
        return sum(self.state.objects[c].collected for c in self.state.order)

    def snapshot(self) -> Snapshot:
        """What the live view shows: counters and the rounds running now."""
        s = self.state
        return Snapshot(
            exp_name=self.config.exp_name, draining=self.dispatcher.draining.is_set(),
            objects=len(s.order), objects_done=s.objects_by_status[ObjectStatus.DONE],
            progress=s.progress, progress_target=s.progress_target,
            gpus={g: _tag(s.gpus.get(g)) for g in self.pool.gpus},
            running=[(job.gpu, job.name, sink.latest) for job, sink in self.watch.values()],
            validation=self._validation_line(),
            waiting={job.name: job.where["queued"] for job, _ in self.watch.values()
                     if "queued" in job.where})

    def _validation_line(self) -> str:
        """``34 % of 1200 grasps passed; 3 rounds to validate``, with [validate]."""
        if self.validations is None:
            return ""
        passed, checked = self.state.validated_counts
        rate = f"{passed / checked:.0%} of {checked} grasps passed" if checked else \
            "no grasp validated yet"
        return f"{rate}; {self.state.validating} round(s) to validate"

    def _running_pids(self) -> dict[int, str]:
        return {pgid: name for rounds_ in self.pool.rounds.values()
                for name, pgid in rounds_.items() if pgid}

    # -- stopping --------------------------------------------------------------------
    def drain(self) -> None:
        """Start no more rounds, from now on, whatever the dispatcher was awaiting."""
        self.dispatcher.stop()

    def stop_run(self, reason: str) -> None:
        """A write failed or every GPU fails every object: finish what runs, exit 1."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.drain()

    async def _watch_signals(self) -> None:
        # SIGHUP (a closed SSH session) drains like SIGTERM instead of killing rounds.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                self.on_signal(signum)

    def on_signal(self, signum: int) -> None:
        """First signal: drain. Second: stop the rounds. Third: kill them now."""
        self.signals += 1
        name = signal.Signals(signum).name
        running = len(self.controls)
        if self.signals == 1:
            self.drain()
            deadline = self.config.timeouts.drain_deadline_s
            self.log.info("drain_started", signal=name, running=running,
                          drain_deadline_s=deadline or None)
            if deadline and self.tg is not None:
                self.tg.start_soon(self._drain_deadline, deadline)
        elif self.signals == 2:
            self.stop_children(f"signal {name}")
        else:
            self.log.info("kill_children", signal=name, running=running)
            for control in self.controls.values():
                control.stop.set()
                control.kill.set()

    def stop_children(self, why: str) -> None:
        grace = self.config.timeouts.grace_s
        self.log.info("stop_children", reason=why, grace_s=grace, running=len(self.controls))
        self.drain()
        for control in self.controls.values():
            control.stop.set()
        if self.handle_signals:  # never outlive grace_s + EXIT_MARGIN_S from here
            timer = threading.Timer(grace + EXIT_MARGIN_S, self._force_exit)
            timer.daemon = True
            timer.start()

    def _force_exit(self) -> None:
        self.log.error("exit_forced", reason="rounds or NVML did not end in time",
                       running=sorted(self.controls))
        os._exit(EXIT_INTERRUPTED)

    async def _drain_deadline(self, deadline_s: float) -> None:
        await anyio.sleep(deadline_s)
        if self.controls and self.signals < 2:
            self.signals = max(self.signals, 1)
            self.stop_children(f"timeouts.drain_deadline_s = {deadline_s:g} passed")
