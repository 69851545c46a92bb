"""The packing loop (``max_rounds_per_gpu = "auto"``): every second, each card's rounds'
progress goes to the meter (``supervisor.gpus.meter``); each measurement it gives is
recorded (``PackingMeasured``), and the state machine (``supervisor.core.packing``)
decides the card's level, which the pool's admission then holds to."""

from __future__ import annotations

import math
import time
from typing import Callable

import anyio

from supervisor.backends.job import RoundJob
from supervisor.config.schema import Config
from supervisor.core import events as ev
from supervisor.core.state import State
from supervisor.gpus.meter import HOLD, Meter, Sample
from supervisor.gpus.pool import GpuPool
from supervisor.run.merger import Merger
from supervisor.run.rounds import LineSink

TICK_S = 1.0  # how often the cards are looked at (more often for short windows)


class Packer:
    def __init__(self, config: Config, state: State, pool: GpuPool, merger: Merger,
                 watch: dict[str, tuple[RoundJob, LineSink]],
                 changed: Callable[[], None]) -> None:
        self.state, self.pool, self.merger, self.watch = state, pool, merger, watch
        self.changed = changed
        self.tick_s = max(0.2, min(TICK_S, config.gpu.pack_window_s / 10))
        self.meter = Meter(config.round_batch_size, config.gpu.pack_window_s,
                           interval_s=0.9 * self.tick_s)
        for gpu, rec in state.gpus.items():  # a resumed run: what sharing cost, as learned
            card = self.meter.card(gpu)  # (older manifests: the gains only)
            learned = rec.sharing or rec.gains
            card.seed.update({k: math.log(g / k) for k, g in learned.items() if g > 0})
        pool.level_of = lambda gpu: state.gpus[gpu].level if gpu in state.gpus else None

    def tick(self) -> bool:
        """One look at every card; True when a measurement was recorded."""
        recorded = False
        for gpu in list(self.pool.gpus):
            samples = [Sample(name, job.object_code, sink.latest_at, sink.latest.n,
                              sink.latest.total)
                       for name in self.pool.rounds.get(gpu, {})
                       if name in self.watch
                       for job, sink in [self.watch[name]] if sink.latest is not None]
            held = list(self.pool.rounds.get(gpu, {}))
            m = self.meter.observe(gpu, time.monotonic(), samples, held,
                                   self.pool.level_of(gpu))
            wait = self.meter.apart(gpu)  # places in step: set them apart
            if wait is not None:
                self.pool.hold_back(gpu, wait)
            if m is None:
                continue
            before = self.state.gpus[gpu].level if gpu in self.state.gpus else None
            recorded = True
            self.merger.record(ev.PackingMeasured(
                gpu, m.level, round(m.gain, 4), round(m.grasps_per_s, 4),
                self.pool.room(gpu), round(m.round_s, 3), round(time.time(), 3),
                m.held, round(m.sharing, 4)))
            after = self.state.gpus[gpu].level if gpu in self.state.gpus else None
            if after is not None and before is not None and after > before:
                # a step up: the new place would start with the round that just started
                self.pool.hold_back(gpu, HOLD * m.round_s)
            if after != before:
                self.changed()
        return recorded

    async def run(self) -> None:
        while True:
            if self.tick():  # journaled now: status shows a level change as it is logged
                try:
                    await self.merger.commit()
                except OSError as exc:  # a full disk: the run drains, as for any write
                    self.merger.write_failed(exc)
            await anyio.sleep(self.tick_s)
