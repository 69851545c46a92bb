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
from typing import TextIO

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from supervisor import cleanup, events as ev, plan, rounds
from supervisor.config import Config
from supervisor.dataset import Accumulator
from supervisor.gpus import GpuPool, ProbeError, read_gpus
from supervisor.live import LiveView, Snapshot
from supervisor.logs import get_logger
from supervisor.merger import Merger, Message
from supervisor.records import GpuStatus, ObjectStatus, now
from supervisor.rounds import Control, Outcome, RoundJob, Started
from supervisor.samples import Sampler
from supervisor.status import removed
from supervisor.store import Store

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
# While waiting for a GPU or disk space, say so again this often, so a long wait on a
# shared server never looks like a hang in the logs.
WAIT_LOG_INTERVAL_S = 600.0
# After the second signal the process exits within grace_s + this, whatever a child or
# NVML does (a child stuck in the kernel ignores even SIGKILL).
EXIT_MARGIN_S = 4.5


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


def proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Supervisor:
    def __init__(self, config: Config, store: Store, accs: dict[str, Accumulator],
                 pool: GpuPool, handle_signals: bool = True,
                 live_stream: TextIO | None = None) -> None:
        self.config, self.store, self.pool = config, store, pool
        self.state = store.state
        self.handle_signals, self.live_stream = handle_signals, live_stream
        self.watch: dict[str, tuple[RoundJob, rounds.LineSink]] = {}  # rounds running now
        self.controls: dict[str, Control] = {}
        self.draining = anyio.Event()
        self.signals = 0
        self.stop_reason: str | None = None
        self.no_gpus = False
        self.changes = Changes()
        self.dispatch_scope = anyio.CancelScope()
        self.tg: TaskGroup | None = None  # the run's task group, once it runs
        self.log = get_logger()
        self.started = time.time()
        self.merger = Merger(config, store, accs, self.changes.notify, self.stop_rounds,
                             self.stop_run)

    # -- main ------------------------------------------------------------------------
    async def run(self) -> int:
        self.log.info("run_started", exp_name=self.config.exp_name,
                      objects=len(self.state.order), gpus=self.pool.gpus,
                      target=self.config.target_count_per_object,
                      manifest=str(self.config.exp_dir / "manifest.json"))
        await self.merger.flush(snapshot=True)
        async with anyio.create_task_group() as tg:
            if self.handle_signals:
                tg.start_soon(self._watch_signals)
            self.tg = tg
            if self.live_stream is not None:
                tg.start_soon(LiveView(self.snapshot, self.live_stream).run)
            tg.start_soon(Sampler(
                self.config.exp_dir, self.pool.probe, gpus=lambda: self.pool.gpus,
                rounds=self._running_pids,
                interval_s=self.config.gpu.sample_interval_s).run)
            send, recv = anyio.create_memory_object_stream[Message](math.inf)
            async with anyio.create_task_group() as work:
                work.start_soon(self.merger.consume, recv)
                work.start_soon(self._dispatch, send)
            tg.cancel_scope.cancel()
        await self.merger.flush(drain=True)
        code = self._exit_code()
        self.merger.record(ev.SupervisorStopped(now(), code))
        await self.merger.flush(snapshot=True)
        code = self._exit_code()  # a failed last write makes it 1
        self._summary(code)
        return code

    def _exit_code(self) -> int:
        if self.merger.write_error is not None or self.stop_reason is not None:
            return EXIT_FAILED
        if self.signals:
            return EXIT_INTERRUPTED
        objects = self.state.objects
        if self.no_gpus or any(objects[c].status != ObjectStatus.DONE for c in self.state.order):
            return EXIT_FAILED
        return EXIT_OK

    def _summary(self, code: int) -> None:
        s, by = self.state, self.state.objects_by_status
        self.log.info(
            "run_finished", exit_code=code, objects=len(s.order),
            objects_done=by[ObjectStatus.DONE], objects_failed=by[ObjectStatus.FAILED],
            objects_exhausted=by[ObjectStatus.EXHAUSTED],
            objects_unfinished=by[ObjectStatus.ACTIVE],
            grasps=sum(s.objects[c].collected for c in s.order),
            removed_by_filter=sum(removed(s.objects[c])[0] for c in s.order),
            removed_as_duplicates=sum(removed(s.objects[c])[1] for c in s.order),
            grasps_target=sum(s.objects[c].target for c in s.order),
            gpus_quarantined=[g for g, r in s.gpus.items()
                              if r.status == GpuStatus.QUARANTINED],
            wall_s=round(time.time() - self.started, 3), **self.merger.summary(),
            **({"error": self.merger.write_error or self.stop_reason}
               if self.merger.write_error or self.stop_reason else {}),
        )

    def snapshot(self) -> Snapshot:
        """What the live view shows: counters and the rounds running now."""
        s = self.state
        return Snapshot(
            exp_name=self.config.exp_name, draining=self.draining.is_set(),
            objects=len(s.order), objects_done=s.objects_by_status[ObjectStatus.DONE],
            progress=s.progress, progress_target=s.progress_target,
            gpus={g: "" if g not in s.gpus or s.gpus[g].status == GpuStatus.HEALTHY
                  else s.gpus[g].status.value for g in self.pool.gpus},
            running=[(job.gpu, job.name, sink.latest) for job, sink in self.watch.values()])

    def _running_pids(self) -> dict[int, str]:
        return {pgid: name for rounds_ in self.pool.rounds.values()
                for name, pgid in rounds_.items() if pgid}

    # -- stopping --------------------------------------------------------------------
    def drain(self) -> None:
        """Start no more rounds, from now on, whatever the dispatcher was awaiting."""
        self.draining.set()
        self.dispatch_scope.cancel()
        self.changes.notify()

    def stop_run(self, reason: str) -> None:
        """A write failed or every GPU fails every object: finish what runs, exit 1."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.drain()

    def stop_rounds(self, names: tuple[str, ...]) -> None:
        for name in names:
            if name in self.controls:
                self.controls[name].stop.set()

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

    # -- dispatcher ------------------------------------------------------------------
    async def _dispatch(self, send: MemoryObjectSendStream[Message]) -> None:
        async with send, anyio.create_task_group() as rounds_tg:
            with self.dispatch_scope:
                await self._dispatch_loop(send, rounds_tg)

    def _candidates(self) -> list[int]:
        """Healthy GPUs with a free slot, when the plan has a round for one of them (all
        are read: a card that fell off the bus is noticed even while nothing suits it)."""
        gpus = self.state.gpus
        free = [g for g in self.pool.gpus if gpus[g].status == GpuStatus.HEALTHY
                and self.pool.has_slot(g)]
        return free if any(plan.pick(self.state, g) is not None for g in free) else []

    async def _dispatch_loop(self, send: MemoryObjectSendStream[Message],
                             rounds_tg: TaskGroup) -> None:
        logged = {"gpu": -math.inf, "disk": -math.inf}
        poll_s = self.config.gpu.poll_interval_s
        while not self.draining.is_set() and not self.state.settled():
            if not self.state.healthy_gpus():
                self.no_gpus = True
                self.log.error("no_gpus_left", reasons={
                    str(g): r.reason for g, r in self.state.gpus.items()})
                return
            candidates = self._candidates()
            if not candidates:
                await self.changes.wait()
                continue
            short = await anyio.to_thread.run_sync(cleanup.short_of_space, self.config,
                                                   abandon_on_cancel=True)
            if short is not None:
                if self._due(logged, "disk"):
                    self.log.warning("disk_wait", reason=short, poll_interval_s=poll_s)
                await self.changes.wait(poll_s)
                continue
            readings = await read_gpus(self.pool.probe, candidates,
                                       self.config.gpu.nvml_timeout_s, self.pool.reading_now)
            if self.draining.is_set():  # a signal came while NVML answered
                return
            if not self._start_where_admitted(readings, send, rounds_tg, logged):
                await self.changes.wait(poll_s)

    def _due(self, logged: dict[str, float], key: str) -> bool:
        if time.monotonic() - logged[key] < WAIT_LOG_INTERVAL_S:
            return False
        logged[key] = time.monotonic()
        return True

    def _start_where_admitted(self, readings: dict, send: MemoryObjectSendStream[Message],
                              rounds_tg: TaskGroup, logged: dict[str, float]) -> bool:
        short: dict[str, str] = {}
        started = False
        for gpu in sorted(readings, key=lambda g: (self.pool.in_flight(g), g)):
            reading = readings[gpu]
            if isinstance(reading, ProbeError):
                self.merger.record(ev.GpuLost(gpu, str(reading)))
                continue
            reason = self.pool.shortage(gpu, reading)
            pick = plan.pick(self.state, gpu)
            if reason is not None or pick is None:
                if reason:
                    short[str(gpu)] = reason
                continue
            self._start(pick, gpu, send, rounds_tg)
            started = True
        if not started and short and self._due(logged, "gpu"):
            self.log.info("gpu_wait", short=short, poll_interval_s=self.config.gpu.poll_interval_s)
        return started

    def _start(self, pick: plan.Pick, gpu: int, send: MemoryObjectSendStream[Message],
               rounds_tg: TaskGroup) -> None:
        assert not self.draining.is_set()
        self.merger.record(ev.RoundStarted(pick.object_code, pick.round_id, gpu, now()))
        rnd = self.state.round_of(pick.object_code, pick.round_id)
        job = RoundJob(pick.object_code, rnd.round_id, rnd.name, rnd.seed, gpu, rnd.attempts)
        self.pool.take(gpu, job.name)
        self.controls[job.name] = Control()
        rounds_tg.start_soon(self._round, job, self.controls[job.name], send.clone())

    async def _round(self, job: RoundJob, control: Control,
                     send: MemoryObjectSendStream[Message]) -> None:
        def on_start(pid: int) -> None:
            self.pool.started(job.gpu, job.name, pid)
            send.send_nowait(Started(job, pid, proc_start(pid)))

        async with send:
            try:
                outcome = await rounds.run_round(self.config, job, control, on_start, self.watch)
            except Exception as exc:  # a bug must cost one round, not the run
                self.log.exception("round_error", **job.fields())
                outcome = Outcome(job, rounds.FAILED, time.time(), time.time(),
                                  reason=f"supervisor error: {type(exc).__name__}: {exc}")
            # The merger records the outcome before the slot is free again (on_ended), so
            # that the next pick already knows where this round failed.
            outcome.on_ended = self._ended
            await send.send(outcome)

    def _ended(self, job: RoundJob) -> None:
        self.pool.release(job.gpu, job.name)
        self.controls.pop(job.name, None)
        self.changes.notify()
