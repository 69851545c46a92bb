"""The dispatcher: asks the plan which round each free, healthy GPU should run, checks
its memory (NVML in daemon threads), records the start through the state machine and
spawns a round task, whose outcome goes to the merger. After the first signal nothing
starts: the dispatcher's cancel scope is cancelled, whatever it was awaiting, and the
draining flag is checked again after every await.

``Supervisor`` composes one; it owns the rounds in flight (``controls``, ``watch``) and
the event that ends dispatching (``stop``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from supervisor.backends.base import Backend
from supervisor.backends.job import RoundJob
from supervisor.config.schema import Config
from supervisor.core import events as ev, plan, slots
from supervisor.core.records import GpuStatus, now
from supervisor.core.packing import is_capacity
from supervisor.core.slots import GpuKey
from supervisor.core.state import State
from supervisor.gpus.pool import GpuPool, wait_cause
from supervisor.gpus.probe import ProbeError
from supervisor.gpus.reads import read_gpus
from supervisor.logs import get_logger
from supervisor.run import cleanup, rounds
from supervisor.run.merger import Merger
from supervisor.run.rounds import Control, LineSink, Outcome, Started

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


def proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


OTHERS_MIB = 1024  # what idle CUDA contexts on a card may hold; more is another user's job


class Dispatcher:
    def __init__(self, config: Config, state: State, pool: GpuPool, backend: Backend,
                 merger: Merger, changes: Changes) -> None:
        self.config, self.state, self.pool, self.backend = config, state, pool, backend
        self.merger = merger  # records what the dispatcher decides, through the store
        self.changes = changes  # notified by the merger after each batch
        self.gpus_changed = Changes()  # a round lost its node: look at the cluster now
        self.log = get_logger()
        self.draining = anyio.Event()
        self.scope = anyio.CancelScope()
        self.controls: dict[str, Control] = {}  # rounds in flight, to stop them
        self.watch: dict[str, tuple[RoundJob, LineSink]] = {}  # for the live view
        self.no_gpus = False  # every GPU was lost or quarantined
        self.small_warned: set[GpuKey] = set()  # cards said to be too small for a round
        self.waiting_for: dict[str, str] = {}  # card -> why rounds wait for it, as said

    def stop(self) -> None:
        """Start no more rounds, from now on, whatever the dispatcher was awaiting."""
        self.draining.set()
        self.scope.cancel()
        self.changes.notify()
        drain = getattr(self.backend, "drain", None)
        if drain is not None:  # a queue's rounds that have not started: cancelled now
            drain()

    def stop_rounds(self, names: tuple[str, ...]) -> None:
        for name in names:
            if name in self.controls:
                self.controls[name].stop.set()

    async def run(self, send: MemoryObjectSendStream[Any]) -> None:
        """Start rounds until the state is settled or ``stop`` is called; returns once
        every round started here has ended (and sent its outcome on ``send``)."""
        async with send, anyio.create_task_group() as rounds_tg:
            with self.scope:
                await self._dispatch_loop(send, rounds_tg)

    def _closed(self) -> set[GpuKey]:
        """Cards that could not take a round even once our rounds there end: a retry
        does not wait for them (``GpuPool.closed``)."""
        return {g for g in self.pool.gpus if self.pool.closed(g)}

    def _candidates(self) -> list[GpuKey]:
        """Healthy GPUs with a free slot, when the plan has a round for one of them (all
        are read: a card that fell off the bus is noticed even while nothing suits it)."""
        gpus, closed = self.state.gpus, self._closed()
        free = [g for g in self.pool.gpus if gpus[g].status == GpuStatus.HEALTHY
                and self.pool.has_slot(g)]
        return free if any(plan.pick(self.state, g, closed) is not None for g in free) else []

    async def _dispatch_loop(self, send: MemoryObjectSendStream[Any],
                             rounds_tg: TaskGroup) -> None:
        logged = {"gpu": -math.inf, "disk": -math.inf}
        poll_s = self.config.gpu.poll_interval_s
        while not self.draining.is_set() and not self.state.settled():
            if not self.state.healthy_gpus():
                if self.backend.dynamic and any(
                        r.status == GpuStatus.LOST for r in self.state.gpus.values()):
                    # A cluster whose nodes all left: they may come back (a restarted
                    # server, a new allocation); SIGINT ends the wait.
                    if self._due(logged, "gpu"):
                        self.log.warning("gpu_wait", short={}, poll_interval_s=poll_s,
                                         reason="no GPU left in the cluster: waiting for a "
                                         "node to join")
                    await self.changes.wait(poll_s)
                    continue
                self.no_gpus = True
                self.log.error("no_gpus_left", reasons={
                    str(g): r.reason for g, r in self.state.gpus.items()})
                return
            candidates = self._candidates()
            if not candidates:
                stuck = None if self.controls else plan.stuck(
                    self.state, [g for g in self.state.healthy_gpus() if g in self.pool.gpus],
                    self._closed())
                if stuck is not None:
                    self.merger.record(ev.RunStuck(stuck))
                    return
                await self.changes.wait(poll_s)
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

    def _start_where_admitted(self, readings: dict, send: MemoryObjectSendStream[Any],
                              rounds_tg: TaskGroup, logged: dict[str, float]) -> bool:
        short: dict[str, str] = {}
        small: list[str] = []  # cards that could not take a round even when empty
        started = False
        for gpu, reading in readings.items():  # every card's latest reading, first
            if not isinstance(reading, ProbeError):
                self.pool.observe(gpu, reading)
        closed = self._closed()
        for gpu in sorted(readings, key=lambda g: (self.pool.in_flight(g), g)):
            reading = readings[gpu]
            if isinstance(reading, ProbeError):
                self.merger.record(ev.GpuLost(gpu, str(reading)))
                continue
            too_small = self.pool.too_small(gpu, reading)
            if too_small is not None:
                small.append(too_small)
                if gpu not in self.small_warned:
                    self.small_warned.add(gpu)
                    self.log.warning("gpu_too_small", **slots.fields(gpu),
                                     reason=self._too_small(too_small))
            reason = self.pool.shortage(gpu, reading)
            pick = plan.pick(self.state, gpu, closed)
            if reason is not None or pick is None:
                if reason and pick is not None:
                    short[str(gpu)] = reason
                continue
            self._start(pick, gpu, send, rounds_tg)
            started = True
        self._say_wait(short if not started else {}, logged)
        if small and len(small) == len(readings) and not self.backend.dynamic and \
                not any(self.pool.in_flight(g) for g in self.pool.gpus):
            # every card is too small and no round runs that could learn a smaller peak
            # (on a cluster a node with larger cards may still join: it waits)
            self.merger.record(ev.NoCardFits(f"no GPU can take one round: "
                                             f"{self._too_small(', '.join(small))}"))
        return started

    def _say_wait(self, short: dict[str, str], logged: dict[str, float]) -> None:
        """``gpu_wait`` when rounds wait for cards' memory: at once when what they wait
        for changes (other cards, another cause), then every WAIT_LOG_INTERVAL_S."""
        cause = {gpu: wait_cause(reason) for gpu, reason in short.items()}
        if not short:
            self.waiting_for = {}
            return
        if cause != self.waiting_for:
            self.waiting_for = cause
            logged["gpu"] = -math.inf
        if self._due(logged, "gpu"):
            self.log.info("gpu_wait", short=short,
                          poll_interval_s=self.config.gpu.poll_interval_s)

    def _too_small(self, cards: str) -> str:
        return f"{cards}, and {self.pool.need()}, or use larger cards"

    def _start(self, pick: plan.Pick, gpu: GpuKey, send: MemoryObjectSendStream[Any],
               rounds_tg: TaskGroup) -> None:
        assert not self.draining.is_set()
        self.merger.record(ev.RoundStarted(pick.object_code, pick.round_id, gpu, now(),
                                           slots.node(gpu)))
        rnd = self.state.round_of(pick.object_code, pick.round_id)
        job = RoundJob(pick.object_code, rnd.round_id, rnd.name, rnd.seed, gpu, rnd.attempts)
        self.pool.take(gpu, job.name)
        self.controls[job.name] = Control()
        rounds_tg.start_soon(self._round, job, self.controls[job.name], send.clone())

    async def _round(self, job: RoundJob, control: Control,
                     send: MemoryObjectSendStream[Any]) -> None:
        local = slots.node(job.gpu) is None  # a node's pid means nothing on this machine

        def on_start(pid: int) -> None:
            self.pool.started(job.gpu, job.name, pid)
            send.send_nowait(Started(job, pid, proc_start(pid) if local else None))

        async with send:
            try:
                outcome = await rounds.run_round(self.config, job, control, on_start, self.watch,
                                                 self.backend)
                if outcome.kind == rounds.INTERRUPTED and not control.stop.is_set():
                    self.gpus_changed.notify()  # its node or worker is gone: look now
            except Exception as exc:  # a bug must cost one round, not the run
                self.log.exception("round_error", **job.fields())
                outcome = Outcome(job, rounds.FAILED, time.time(), time.time(),
                                  reason=f"supervisor error: {type(exc).__name__}: {exc}")
            if outcome.kind == rounds.OUT_OF_MEMORY:
                await self._after_out_of_memory(outcome)
            # The merger records the outcome before the slot is free again (on_ended), so
            # that the next pick already knows where this round failed.
            outcome.on_ended = self._ended
            outcome.gpu_mib = self.pool.peak_mib.get(job.name)
            await send.send(outcome)

    async def _after_out_of_memory(self, outcome: Outcome) -> None:
        """What the state machine needs to tell capacity from a batch that fits no card:
        was the round alone, and what does its card have free now that it has ended."""
        gpu = outcome.job.gpu
        readings = await read_gpus(self.pool.probe, [gpu], self.config.gpu.nvml_timeout_s,
                                   self.pool.reading_now)
        reading = readings.get(gpu)
        seen = None if isinstance(reading, ProbeError) or reading is None else reading
        outcome.free_mib = None if seen is None else seen.free_mib
        # alone on the card: no round of ours beside it, and no one else's memory there
        # now that it has ended (another user's job makes it capacity, not the batch)
        others = None if seen is None or seen.total_mib is None or seen.free_mib is None \
            else seen.total_mib - seen.free_mib
        outcome.alone = self.pool.alone(outcome.job.name) and \
            (others is None or others <= OTHERS_MIB)
        outcome.estimate_mib = self.pool.estimate_mib()

    async def follow_gpus(self) -> None:
        """A cluster's GPUs come and go: follow them (every poll, or at once when a round
        was lost) until cancelled. Left ones first: a replaced worker leaves and comes back."""
        while True:
            added, removed = await self.backend.refresh()
            for gpu, reason in removed:
                self.merger.record(ev.GpuLost(gpu, reason))
                self.pool.remove(gpu)
            for gpu in added:
                self.merger.record(ev.GpuAdded(gpu))
                self.pool.add(gpu)
            if added or removed:
                self.changes.notify()
            await self.gpus_changed.wait(self.config.gpu.poll_interval_s)

    def _ended(self, outcome: Outcome) -> None:
        job = outcome.job
        if outcome.kind == rounds.OUT_OF_MEMORY:
            self.pool.unfinished(job.name)
            if is_capacity(outcome.alone, outcome.free_mib, outcome.estimate_mib):
                self.pool.out_of_memory(job.gpu, outcome.free_mib)
        self.pool.release(job.gpu, job.name)
        self.controls.pop(job.name, None)
        self.changes.notify()
