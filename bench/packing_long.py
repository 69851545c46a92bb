"""Packing over runs as long as a lab's, in simulated time (printed, not asserted):
python bench/packing_long.py [--hours H]

bench/packing.py runs the real supervisor, so its runs last minutes and exploring is much
of them; a lab's run lasts hours. Here the meter and the policy themselves
(``supervisor.gpus.meter``, ``supervisor.core.packing``, as the packer calls them, its
holds included) drive
one simulated card (tests/test_packing.py's ``Card``: k rounds iterating each go at
curve[k] / k of their object's speed; a round first starts for ``startup`` seconds, then
makes 30 s of its object's iterations alone, lengths varying by up to 20 %), with 16
objects of uneven cost, the object due changing every 100 s. Time is scaled to rounds of
about five minutes: a round is 30 s here, so ``pack_window_s`` is 6 s (60 s) and
``pack_retest_s`` 180 s (the default 1800 s). Printed: rounds made by "auto" against the
best fixed level over the same time, at three run lengths, for start-ups of 5 % and 20 %
of a round (a real BimanGrasp round, and this machine's emulator rounds). No processes,
no shared CPU: what exploring and re-tests cost, and nothing else.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_packing import Card, T, new  # noqa: E402

from supervisor.core import events as ev  # noqa: E402
from supervisor.core.transitions import apply  # noqa: E402
from supervisor.gpus.meter import HOLD, Meter  # noqa: E402

CURVES = {
    "peak at 1": (1, 0.9, 0.85, 0.8),
    "peak at 2": (1, 1.8, 1.75, 1.7),
    "falls after 2": (1, 1.7, 1.3, 1.1),
    "peak at 4": (1, 1.55, 1.9, 2.2, 2.15),
}
FITS = 6  # rounds memory admits
ROUND_S = 30.0  # one round's iterations alone, simulated seconds
STEP_S, LOOK_S = 0.2, 1.0


def made(curve: tuple[float, ...], level: int | str, startup: float, ends: list[float],
         speeds: dict[str, float]) -> list[int]:
    """Rounds finished by each of ``ends`` (seconds), at a fixed level or with "auto"."""
    card, codes = Card(curve, speeds, startup), sorted(speeds)
    state = new(pack_retest_s=6 * ROUND_S) if level == "auto" else None
    meter = Meter(batch_size=4, window_s=ROUND_S / 5)
    counts, now, look, held_until = [], 0.0, 0.0, 0.0
    for end in ends:
        while now < end:
            code = codes[int(now // 100) % len(codes)]
            at = min(FITS, state.gpus[0].level or 1) - (now < held_until) if state \
                else int(level)
            card.fill(at, code)
            card.step(STEP_S)
            now += STEP_S
            if state is None or now - look < LOOK_S:
                continue
            look, before = now, state.gpus[0].level
            m = meter.observe(0, now, card.samples(now), list(card.rounds), before)
            wait = meter.apart(0)  # as the packer: places in step are set apart
            if wait is not None:
                held_until = now + wait
            if m is not None:
                apply(state, ev.PackingMeasured(0, m.level, m.gain, m.grasps_per_s,
                                                len(card.rounds) < FITS, m.round_s,
                                                T + now, m.held, m.sharing))
                if (state.gpus[0].level or 0) > (before or 0):  # a step up: the new
                    held_until = now + HOLD * m.round_s  # place waits, as in the packer
        counts.append(card.done)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, nargs="+", default=[1.0, 4.0, 16.0],
                   help="run lengths, in hours of five-minute rounds")
    args = p.parse_args()
    rng = random.Random(16)
    speeds = {f"object_{i:02d}": rng.uniform(20.0, 60.0) for i in range(16)}
    # an hour of five-minute rounds is 12 rounds: 12 x 30 s here
    ends = [h * 12 * ROUND_S for h in args.hours]
    print("rounds made by auto / by the best fixed level (which), over runs of "
          + ", ".join(f"{h:g} h" for h in args.hours) + " of five-minute rounds")
    for share in (0.05, 0.2):
        startup = ROUND_S * share / (1 - share)
        print(f"\nstart-ups {share:.0%} of a round's life:")
        for name, curve in CURVES.items():
            fixed = {k: made(curve, k, startup, ends, speeds) for k in range(1, FITS + 1)}
            auto = made(curve, "auto", startup, ends, speeds)
            cells = []
            for i, h in enumerate(args.hours):
                best = max(fixed, key=lambda k: fixed[k][i])
                cells.append(f"{h:g} h: {auto[i] / fixed[best][i]:.3f} ({best})")
            print(f"  {name:14} " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    main()
