"""How fast each card makes grasps with 1, 2, 3, ... rounds at once, from the rounds'
own progress (their tqdm bars: iterations done, and when the supervisor read them).

Objects differ in cost per iteration, so raw grasps per second would mistake a change of
object for a change of level. The meter compares like with like: every interval in which
the same rounds iterate on a card gives each round's speed, and, per card,

    log(speed of a round of object o with k rounds iterating) = log s[o] + log g[k]

with g[1] = 1: s[o] is the object's speed alone there, g[k] what sharing the card costs
each round. Each object is its own control: the same object's speed with k and with k - 1
rounds iterating (rounds start and end, so every level sees both) gives g[k] / g[k - 1]
without knowing s[o], and g[k] is the chain of those ratios from one, each the mean over
the objects seen at both most recently. Moving averages, so they follow other users'
jobs as they come and go. (An object's speed is never guessed from g: that made errors
compound from one object to the next.)

A round does not iterate all the time it holds its place on the card: it starts (Python,
CUDA, the models), saves, and the next one is spawned. The card's throughput at level L is
therefore measured in wall time: over a window, how long k of its rounds were iterating,
for each k, gives

    gain[L] = time-average of k * g[k],  relative to one round iterating alone,

so a level whose places often wait on a start-up is worth what it makes, and a level above
the iterating peak wins when start-ups are long. A window runs from one round's start to
another's, over whole cycles (a multiple of L starts: every place went through its
start-up as often as the window is long) and at least ``window_s``; a window that began or
ended anywhere in a cycle would be judged by where, not by the level.

Places must not run in step: rounds of one length that start together end together, so
no round is ever seen with one fewer iterating and g[k] / g[k - 1] cannot be told from
what the objects cost (found with many objects of a few rounds each: a card held a
level it never judged). A step up starts places together, so the new place waits
``HOLD`` of a round first (the packer holds it back); a window that is complete but cannot
be judged for that reason asks for the same wait once (``apart``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Collection, Sequence

from supervisor.core.slots import GpuKey

ALPHA = 0.3  # weight of the newest interval in the moving averages
CYCLES = 2  # start-ups per place in a window: one alone leaves a judgement 5-8 % noisy
RECENT = 8  # objects whose k / k - 1 comparison makes a ratio (the newest)
OBJECTS = 64  # objects whose speeds a card keeps (the newest)
GAP_S = 30.0  # a longer pause between two looks (a stopped supervisor) counts for nothing
HOLD = 0.1  # of a round's time: how long one place waits, to set the card's places apart


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
    level: int  # the card's level (rounds it may hold: iterating, starting or saving)
    gain: float  # the card's throughput relative to one round iterating alone, wall time
    grasps_per_s: float
    round_s: float  # how long a round holds its place at this level, start-up included
    sharing: float  # the gain with every round iterating (no start-ups): level * g[level]
    held: int  # rounds on the card at the end of the window


@dataclass
class _Window:
    level: int
    starts: int = 0  # rounds started on the card since the window began
    seconds: float = 0.0
    busy: dict[int, float] = field(default_factory=dict)  # k iterating -> seconds
    rounds: float = 0.0  # the rounds' progress: iterations done over each one's total
    apart: bool = False  # a place was held back once to set the places apart


@dataclass
class _Card:
    mark_t: float = 0.0  # the interval of the same rounds iterating: since when, from what
    mark: dict[str, tuple[float, int]] = field(default_factory=dict)
    last_t: float | None = None  # the previous look: when, rounds iterating and held, bars
    last_k: int = 0
    last_names: set[str] = field(default_factory=set)
    last_n: dict[str, int] = field(default_factory=dict)
    # object -> k -> the moving average of log(its rounds' speed with k iterating)
    log_r: OrderedDict[str, dict[int, float]] = field(default_factory=OrderedDict)
    # k -> object -> log_r[o][k] - log_r[o][k - 1], the RECENT newest objects
    ratios: dict[int, OrderedDict[str, float]] = field(default_factory=dict)
    seed: dict[int, float] = field(default_factory=dict)  # log g learned by a run before
    window: _Window | None = None

    def log_g(self, k: int) -> float | None:
        """log g[k]: the chain of ratios from one round (what a run before learned where
        a ratio was not measured yet); None when neither knows."""
        total = 0.0
        for j in range(2, k + 1):
            here = self.ratios.get(j)
            if here:
                total += sum(here.values()) / len(here)
            elif j in self.seed and j - 1 in self.seed:
                total += self.seed[j] - self.seed[j - 1]
            else:
                return None
        return total


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


def _g(card: _Card, k: int) -> float:
    """What sharing costs each of k iterating rounds; a k not known takes the nearest
    known (such moments are short: a level's own k is known before it is judged)."""
    for j in sorted(range(1, 2 * k + 2), key=lambda j: (abs(j - k), -j)):
        value = card.log_g(j)
        if value is not None:
            return math.exp(value)
    return 1.0


class Meter:
    def __init__(self, batch_size: int, window_s: float, interval_s: float = 1.0) -> None:
        """``interval_s``: the shortest interval that counts (shorter ones are mostly the
        noise of when lines were read)."""
        self.batch_size = batch_size
        self.window_s, self.interval_s = window_s, interval_s
        self.cards: dict[GpuKey, _Card] = {}

    def card(self, gpu: GpuKey) -> _Card:
        return self.cards.setdefault(gpu, _Card())

    def observe(self, gpu: GpuKey, now: float, samples: Sequence[Sample],
                held: Collection[str] | None = None, level: int | None = None
                ) -> Measurement | None:
        """The rounds on ``gpu`` now with a bar (``samples``), all it holds (``held``,
        default: those with a bar) and its level (default: as many as it holds); a
        Measurement when the level's window is full."""
        card = self.card(gpu)
        names = set(s.name for s in samples) if held is None else set(held)
        level = level or len(names)
        running = {s.name: s for s in samples if 0 < s.n < s.total}
        started = len(names - card.last_names)  # rounds, not looks: places start together
        result = self._account(gpu, card, now, samples, started, level, len(names))
        card.last_t, card.last_k, card.last_names = now, len(running), names
        card.last_n = {s.name: s.n for s in samples}
        self._interval(card, now, running)
        return result

    def apart(self, gpu: GpuKey) -> float | None:
        """Seconds one place of ``gpu`` should wait before its next round, when its window
        is complete but cannot be judged: no round was seen with one fewer iterating (the
        places run in step). Once per window."""
        card = self.cards.get(gpu)
        w = card.window if card is not None else None
        if w is None or w.level < 2 or w.apart or w.seconds < self.window_s \
                or w.starts < CYCLES * w.level or card.log_g(w.level) is not None:
            return None
        w.apart = True
        return HOLD * w.level * w.seconds / w.starts

    def _account(self, gpu: GpuKey, card: _Card, now: float, samples: Sequence[Sample],
                 started: int, level: int, held: int) -> Measurement | None:
        """Adds the time since the last look to the window; judges it at a round's start."""
        w = card.window
        if w is not None and (w.level != level or card.last_t is None
                              or not 0 < now - card.last_t < GAP_S
                              or max(held, len(card.last_names)) > level):
            # the level changed (a card stepped down still holds the rounds above it),
            # or nobody looked for a while
            w = card.window = None
        if w is not None:
            dt = now - card.last_t
            w.seconds += dt
            w.busy[card.last_k] = w.busy.get(card.last_k, 0.0) + dt
            w.rounds += sum(max(0, s.n - card.last_n[s.name]) / s.total for s in samples
                            if s.name in card.last_n and s.total > 0)
        if not started or level <= 0:
            return None
        result = None
        if w is not None:
            w.starts += started
            result = self._judge(gpu, card, w, held)
        if card.window is None:
            card.window = _Window(level)
        return result

    def _interval(self, card: _Card, now: float, running: dict[str, Sample]) -> None:
        """Learns g and s from an interval in which the same rounds iterated."""
        if set(running) != set(card.mark) or not running:
            card.mark_t, card.mark = now, {n: (s.t, s.n) for n, s in running.items()}
            return  # the rounds changed: a new interval starts
        if now - card.mark_t < self.interval_s:
            return
        rates = []
        for name, s in running.items():
            t0, n0 = card.mark[name]
            if s.t <= t0 or s.n <= n0:
                return  # no new line from this round yet
            rates.append((s.code, (s.n - n0) / (s.t - t0)))
        card.mark_t, card.mark = now, {n: (s.t, s.n) for n, s in running.items()}
        self._learn(card, rates)

    def _learn(self, card: _Card, rates: list[tuple[str, float]]) -> None:
        k = len(rates)
        for code, rate in rates:
            speeds = card.log_r.setdefault(code, {})
            card.log_r.move_to_end(code)
            speeds[k] = _average(speeds.get(k), math.log(rate))
            for j in (k, k + 1):  # this object's ratios that involve k
                if j >= 2 and j in speeds and j - 1 in speeds:
                    recent = card.ratios.setdefault(j, OrderedDict())
                    recent[code] = speeds[j] - speeds[j - 1]
                    recent.move_to_end(code)
                    if len(recent) > RECENT:
                        recent.popitem(last=False)
        if len(card.log_r) > OBJECTS:
            card.log_r.popitem(last=False)

    def _judge(self, gpu: GpuKey, card: _Card, w: _Window, held: int) -> Measurement | None:
        # Whole cycles: a multiple of the level, or one cycle more when places starting
        # together stepped over it.
        cycles = w.starts % w.level == 0 or w.starts >= (CYCLES + 1) * w.level
        if w.seconds < self.window_s or w.starts < CYCLES * w.level or not cycles \
                or w.rounds <= 0 or card.log_g(w.level) is None:
            return None
        card.window = None
        gain = sum(t * k * _g(card, k) for k, t in w.busy.items() if k > 0) / w.seconds
        return Measurement(gpu, w.level, gain, w.rounds * self.batch_size / w.seconds,
                           w.level * w.seconds / w.starts, w.level * _g(card, w.level),
                           held)
