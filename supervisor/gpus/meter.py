"""How fast each card makes grasps with 1, 2, 3, ... rounds at once, from the rounds'
own progress (their tqdm bars: iterations done, and when the supervisor read them).

Objects differ in cost per iteration, so raw grasps per second would mistake a change of
object for a change of level. The meter compares like with like: every interval in which
the same rounds iterate on a card gives each round's speed, and, per card,

    log(speed of a round of object o with k rounds at once) = log s[o] + log g[k]

with g[1] = 1: s[o] is the object's speed alone there, g[k] what sharing the card costs
each round. An object seen alone gives s[o]; one seen beside an object of known speed
gives g[k], and then its own speed. The card's throughput at k rounds, relative to one
round alone, is ``gain = k * g[k]``, whatever the objects. Both are moving averages, so
they follow other users' jobs as they come and go.

Pure: fed samples, it returns a ``Measurement`` once a level has been watched for
``window_s`` seconds of iterating (``supervisor.core.packing`` decides what to do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from supervisor.core.slots import GpuKey

ALPHA = 0.3  # weight of the newest interval in the moving averages


@dataclass(frozen=True)
class Sample:
    """One round on a card: its latest bar, ``n`` of ``total`` iterations, read at ``t``."""
    name: str
    code: str
    t: float
    n: int
    total: int


@dataclass(frozen=True)
class Measurement:
    gpu: GpuKey
    level: int
    gain: float  # the card's throughput relative to one round alone
    grasps_per_s: float
    round_s: float  # how long a round takes at this level


@dataclass
class _Window:
    seconds: float = 0.0
    grasps: float = 0.0  # grasps per second x seconds
    round_rate: float = 0.0  # per-round iterations per second x seconds


@dataclass
class _Card:
    mark_t: float = 0.0
    mark: dict[str, tuple[float, int]] = field(default_factory=dict)
    log_g: dict[int, float] = field(default_factory=lambda: {1: 0.0})
    log_s: dict[str, float] = field(default_factory=dict)
    windows: dict[int, _Window] = field(default_factory=dict)


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


class Meter:
    def __init__(self, batch_size: int, num_iterations: int, window_s: float,
                 interval_s: float = 1.0) -> None:
        """``interval_s``: the shortest interval that counts (shorter ones are mostly the
        noise of when lines were read)."""
        self.grasps_per_iteration = batch_size / max(1, num_iterations)
        self.num_iterations = max(1, num_iterations)
        self.window_s, self.interval_s = window_s, interval_s
        self.cards: dict[GpuKey, _Card] = {}

    def card(self, gpu: GpuKey) -> _Card:
        return self.cards.setdefault(gpu, _Card())

    def observe(self, gpu: GpuKey, now: float, samples: Sequence[Sample]) -> Measurement | None:
        """The rounds on ``gpu`` now; a Measurement when a level's window is full."""
        card = self.card(gpu)
        running = {s.name: s for s in samples if 0 < s.n < s.total}
        if set(running) != set(card.mark) or not running:
            card.mark_t, card.mark = now, {n: (s.t, s.n) for n, s in running.items()}
            return None  # the rounds changed: a new interval starts
        if now - card.mark_t < self.interval_s:
            return None
        rates = []
        for name, s in running.items():
            t0, n0 = card.mark[name]
            if s.t <= t0 or s.n <= n0:
                return None  # no new line from this round yet
            rates.append((s.code, (s.n - n0) / (s.t - t0)))
        span, card.mark_t = now - card.mark_t, now
        card.mark = {n: (s.t, s.n) for n, s in running.items()}
        self._learn(card, rates)
        return self._window(gpu, card, len(rates), span, rates)

    def _learn(self, card: _Card, rates: list[tuple[str, float]]) -> None:
        k = len(rates)
        logs = [(code, math.log(rate)) for code, rate in rates]
        if k == 1:
            code, value = logs[0]
            card.log_s[code] = _average(card.log_s.get(code), value)
            return
        known = [value - card.log_s[code] for code, value in logs if code in card.log_s]
        if known:
            card.log_g[k] = _average(card.log_g.get(k), sum(known) / len(known))
        if k in card.log_g:
            for code, value in logs:
                card.log_s.setdefault(code, value - card.log_g[k])

    def _window(self, gpu: GpuKey, card: _Card, k: int, span: float,
                rates: list[tuple[str, float]]) -> Measurement | None:
        w = card.windows.setdefault(k, _Window())
        total = sum(rate for _, rate in rates)
        w.seconds += span
        w.grasps += span * total * self.grasps_per_iteration
        w.round_rate += span * total / k
        if w.seconds < self.window_s or k not in card.log_g:
            return None
        card.windows[k] = _Window()
        return Measurement(gpu, k, k * math.exp(card.log_g[k]), w.grasps / w.seconds,
                           self.num_iterations / (w.round_rate / w.seconds))
