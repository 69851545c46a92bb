"""How many rounds a card should hold at once (``max_rounds_per_gpu = "auto"``): the level
that makes the most grasps per second, found by measuring. Part of the state machine
(see transitions): pure, over a GPU's record.

Each card starts at one round (or at the level a resumed run learned). A measurement of
the card at its current level (``PackingMeasured``, from ``supervisor.gpus.meter``):

- raised the card's throughput by at least ``pack_gain`` over the level below, and
  memory admits one more round: step up by one;
- is worse than the level below: step back, and try the higher level again only after
  ``pack_retest_s`` (at least two rounds' time; doubled for each step back since the card
  last changed, up to 8x): other users' jobs come and go, the object mix changes;
- otherwise: stay, and re-test the level above when that time has come.

When the current level's gain moves by more than twice ``pack_gain`` in two measurements
in a row (another user's job came or went), the other levels' figures no longer hold: the card is measured again from
one round up. When memory admits fewer rounds than the level (another job's memory), the
level follows it down.

A CUDA out-of-memory error drops the card's level by one and keeps it from rising for
the same time. The gains are relative to one round alone and compare like with like
(each object against its own speed), so a change of object does not look like a change
of level.
"""

from __future__ import annotations

from typing import Any, Mapping

from supervisor.core import slots
from supervisor.core.events import PackingMeasured
from supervisor.core.records import GpuRecord
from supervisor.core.state import Effect, Log, State

CHANGED = 2  # a level whose gain moved by this many pack_gains: the card itself changed
MAX_DOUBLINGS = 3  # of the re-test wait


def _over_one(gains: Mapping[int, float], gain: float) -> float:
    """A gain over one round's (as measured; as it is when one round was not measured)."""
    one = gains.get(1)
    return gain / one if one and one > 0 else gain


def relative(gains: Mapping[Any, float], level: int | None) -> float | None:
    """The card's grasps/s at ``level`` over its grasps/s with one round (both in wall
    time, as measured); None when the level was not measured. Keys: ints or, from a
    manifest, strings."""
    at = {int(k): v for k, v in gains.items()}
    gain = None if level is None else at.get(level)
    return None if gain is None else _over_one(at, gain)


def _x(rec: GpuRecord, gain: float) -> str:
    """``1.80x``: the grasps/s of one round, times this."""
    return f"{_over_one(rec.gains, gain):.2f}x"


def _set(rec: GpuRecord, level: int, why: str) -> list[Effect]:
    before, rec.level = rec.level, level
    if rec.retest_from is not None and level != rec.retest_from + 1:
        rec.retest_from = None  # back to the level held, or the card changed
    if before == level:
        return []
    return [Log("packing_changed", {
        **slots.fields(rec.gpu), "from": before, "to": level, "why": why,
        "gains": {str(k): round(v, 3) for k, v in sorted(rec.gains.items())},
        "grasps_per_s": {str(k): round(v, 3) for k, v in sorted(rec.rates.items())}})]


def start(state: State, rec: GpuRecord) -> None:
    """A card the run begins with: one round, unless a run before learned more. Then the
    highest level up to the one it held whose sharing costs were all measured (a level
    stepped up to just before the run stopped was not): without them the meter cannot
    judge it, since the rounds a resume starts all at once are never seen with one
    fewer iterating."""
    if not state.policy.packing:
        return
    if rec.level is None:
        rec.level = 1
    measured = 1
    while measured < rec.level and measured + 1 in rec.sharing:
        measured += 1
    rec.level = measured
    if held(rec.level, rec.retest_from) == rec.level:
        rec.retest_from = None  # no re-test goes on: the level is held


def _retest_after(state: State, rec: GpuRecord, e: PackingMeasured) -> float:
    """When to try the level above again: after pack_retest_s, doubled for each step back
    since the card last changed (up to 8x: a level that keeps losing costs less and less
    of a long run), and never sooner than two rounds."""
    wait = state.policy.pack_retest_s * 2 ** min(max(rec.backoffs - 1, 0), MAX_DOUBLINGS)
    return e.at + max(wait, 2 * e.round_s)


def _at_once(k: int) -> str:
    return f"{k} round{'s' if k != 1 else ''} at once"


def measured(state: State, e: PackingMeasured) -> list[Effect]:
    rec = state.gpus.get(e.gpu)
    if rec is None or rec.level is None:
        return []
    k, before = e.level, rec.gains.get(e.level)
    if 0 < e.held < rec.level:  # the card did not fill up to its level
        if not e.room:  # another job's memory: only what it holds fits now
            return _set(rec, e.held, f"memory admits only {_at_once(e.held)} now")
        return []  # no round to give it (the run's end): nothing learned
    if k == rec.level and before is not None and \
            abs(e.gain - before) > CHANGED * state.policy.pack_gain * before:
        rec.drifts += 1
        if rec.drifts < 2:
            return []  # once may be noise: wait for the next measurement
        # Twice in a row: the card changed (another user's job came or went), and what
        # was measured at the other levels no longer holds. Measure again from one up.
        rec.drifts, rec.backoffs, rec.worse = 0, 0, {}
        rec.gains, rec.rates = {k: e.gain}, {k: e.grasps_per_s}
        rec.sharing = {k: e.sharing} if e.sharing > 0 else {}
        if k > 1:
            rec.gains, rec.rates, rec.sharing = {}, {}, {}
            return _set(rec, 1, f"{_at_once(k)} now make {e.gain / before:.2f} times what "
                                f"they did: the card changed, measuring again from one")
    rec.drifts = 0 if k == rec.level else rec.drifts
    rec.gains[k], rec.rates[k] = e.gain, e.grasps_per_s
    if e.sharing > 0:
        rec.sharing[k] = e.sharing
    if k != rec.level:  # a measurement from before the level changed: only recorded
        return []
    below, above = rec.gains.get(k - 1), rec.gains.get(k + 1)
    if below is not None and e.gain < below:
        rec.backoffs += 1
        rec.retest_at = _retest_after(state, rec, e)
        rec.worse[k] = round(_over_one(rec.gains, e.gain), 3)  # the figure said, kept
        return _set(rec, k - 1, f"{_at_once(k)} measured {rec.worse[k]:.2f}x the grasps/s "
                                f"of one, less than the {_x(rec, below)} of {k - 1}")
    rec.retest_from = None  # a re-test that did not lose: the level is held now
    rec.worse.pop(k, None)
    paid = below is None or e.gain >= below * (1 + state.policy.pack_gain)
    if not e.room or e.at < rec.held_until:
        return []
    if paid and above is None:
        now = (f"iterating {e.gain:.0%} of the time" if below is None else
               f"{_x(rec, e.gain)} the grasps/s of one"
               + (f" ({k - 1}: {_x(rec, below)})" if k > 2 else ""))
        return _set(rec, k + 1, f"{_at_once(k)}: {now}; trying {k + 1}")
    if above is not None and e.at >= rec.retest_at:
        rec.gains.pop(k + 1, None)  # measured again from scratch
        rec.retest_at = _retest_after(state, rec, e)
        rec.retest_from = k
        was = rec.worse.get(k + 1, _over_one(rec.gains, above))
        return _set(rec, k + 1, f"re-testing {_at_once(k + 1)} (it measured {was:.2f}x, "
                                f"{k} measures {_x(rec, e.gain)})")
    return []


def is_capacity(alone: bool, free_mib: int | None, estimate_mib: int | None) -> bool:
    """An out-of-memory is the card's capacity (run again elsewhere or later) unless the
    round was alone on its card and the card had what a round is expected to take."""
    return not (alone and free_mib is not None and estimate_mib is not None
                and free_mib >= estimate_mib)


def out_of_memory(state: State, rec: GpuRecord, at: float, round_s: float) -> list[Effect]:
    """A round ran out of memory on this card: one round fewer, not raised for a while."""
    if rec.level is None:
        return []
    rec.held_until = at + max(state.policy.pack_retest_s, 2 * round_s)
    return _set(rec, max(1, rec.level - 1),
                f"CUDA out of memory with {_at_once(rec.level)}")


def held(level: int | None, retest_from: int | None) -> int | None:
    """The level a card holds: during a re-test of the level above, the one below it."""
    return retest_from if retest_from is not None and level == retest_from + 1 else level


def _level_text(gains: Mapping[Any, float], level: int) -> str:
    if level <= 1:
        return ""
    gain = relative(gains, level)
    if gain is not None:
        return f"{gain:.2f}x"
    below = relative(gains, level - 1) if level > 2 else None
    return "measuring" + (f" ({level - 1}: {below:.2f}x)" if below is not None else "")


def shown(gains: Mapping[Any, float], level: int | None, retest_from: int | None = None,
          worse: Mapping[Any, float] | None = None) -> str:
    """What a card's level has made, for status, the live view and the report, beside
    the level it holds (``held``): ``2.40x`` (relative to one round), ``measuring (2:
    1.79x)`` while the level stepped up to is measured, ``re-testing 2 (it measured
    0.70x)`` while the level above the one held is tried again, or "" for one round or
    nothing measured."""
    if level is None:
        return ""
    base = held(level, retest_from)
    assert base is not None
    text = _level_text(gains, base)
    if base == level:
        return text
    was = {int(k): v for k, v in (worse or {}).items()}.get(level)
    retest = f"re-testing {level}" + (f" (it measured {was:.2f}x)" if was is not None else "")
    return f"{text}, {retest}" if text else retest


def shown_of(info: Mapping[str, Any]) -> tuple[int | None, str]:
    """The level held and what it made, from a GpuRecord's JSON (the manifest's gpus)."""
    level, retest_from = info.get("level"), info.get("retest_from")
    return held(level, retest_from), shown(info.get("gains") or {}, level, retest_from,
                                           info.get("worse"))


def summary(rec: GpuRecord) -> dict[str, Any]:
    """What status and the report show of a card's packing."""
    gain, base = relative(rec.gains, rec.level), held(rec.level, rec.retest_from)
    return {"level": rec.level, "held": base,
            "retesting": rec.level if base != rec.level else None,
            "gain": None if gain is None else round(gain, 3),
            "shown": shown(rec.gains, rec.level, rec.retest_from, rec.worse),
            "made": "" if base is None else _level_text(rec.gains, base),
            "gains": {str(k): round(v, 3) for k, v in sorted(rec.gains.items())},
            "grasps_per_s": {str(k): round(v, 3) for k, v in sorted(rec.rates.items())},
            "sharing": {str(k): round(v, 3) for k, v in sorted(rec.sharing.items())},
            "worse": {str(k): v for k, v in sorted(rec.worse.items())}}


def describe(gpu_label: str, info: dict[str, Any]) -> str:
    """``GPU 2: 3 rounds at once, 2.40x the grasps/s of one``; during a re-test, the
    level held and the one tried: ``GPU 0: 1 round at once, re-testing 2 (it measured
    0.70x the grasps/s of one)``."""
    level, base = info.get("level"), info.get("held")
    if level is None or base is None:
        return ""
    made = info.get("made", "")
    parts = [f"{gpu_label}: {_at_once(base)}"]
    if made:
        parts.append(made + (" the grasps/s of one" if made.endswith("x") else ""))
    if info.get("retesting") is not None:
        was = info.get("worse", {}).get(str(level))
        parts.append(f"re-testing {level}" + ("" if was is None else
                                              f" (it measured {was:.2f}x the grasps/s of one)"))
    return ", ".join(parts)
