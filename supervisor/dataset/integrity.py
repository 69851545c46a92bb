"""Whether an object's final.npz is the one the run delivered: the one check that status,
export, resume and recover use, and the repair of misplaced files.

The manifest records, per object, the rows each round has in final.npz (its merged rounds'
``used``), and the file's size, modification time and a digest of its arrays. The file's
own ``seed`` and ``round_id`` columns say whose grasps it holds: an object's seeds are
``seed_base + index * SEED_STRIDE + round_id``. So a file is

- ``ok``: what the run wrote (same size and time; or, read, the same rounds, rows and
  digest);
- ``stale``: this object's grasps, consistent with its rounds, but not the write the
  manifest recorded (a kill between writing it and journaling it; an earlier file kept
  when a later write failed): resume reconciles it;
- ``missing``: recorded, not there: resume rebuilds it;
- ``short``: the object is done but its last write failed: resume writes it;
- ``unreadable``, ``foreign`` (another object's grasps) or ``altered`` (other values,
  or rows of rounds the run never delivered): never exported; ``recover`` puts foreign
  files back where they belong and moves the rest aside, then a rerun rebuilds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from supervisor.dataset import final
from supervisor.storage import paths
from supervisor.core.plan import SEED_STRIDE
from supervisor.core.records import HAS_GRASPS, ObjectStatus, RoundStatus
from supervisor.core.state import State

OK, STALE, MISSING, SHORT = "ok", "stale", "missing", "short"
UNREADABLE, FOREIGN, ALTERED = "unreadable", "foreign", "altered"
NEEDS_RECOVER = (UNREADABLE, FOREIGN, ALTERED)  # a rerun refuses these: recover first


@dataclass(frozen=True)
class Finding:
    kind: str
    problem: str | None = None  # one line; None when ok
    owner: int | None = None  # foreign: the object index whose seeds the file holds
    held: dict[int, int] | None = None  # stale: rows per round the file holds
    data: dict[str, np.ndarray] | None = field(default=None, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return self.kind == OK

    @property
    def usable(self) -> bool:
        """This object's grasps as the run wrote them, if not (yet) as recorded: a live run
        between writing a file and journaling it shows one; resume reconciles it."""
        return self.kind in (OK, STALE)


def delivered(state: State, code: str) -> dict[int, int]:
    """Rows per round that the manifest says final.npz holds."""
    return {rid: r.used for rid, r in state.objects[code].rounds.items()
            if r.status == RoundStatus.MERGED and r.used}


def _held(data: dict[str, np.ndarray]) -> dict[int, int]:
    rids, counts = np.unique(data["round_id"], return_counts=True)
    return dict(zip(rids.tolist(), counts.tolist()))


def _owner(data: dict[str, np.ndarray], seed_base: int) -> int | None | str:
    """The object index every row's seed belongs to; "mixed" when they disagree."""
    offset = data["seed"] - data["round_id"] - seed_base
    if not len(offset):
        return None
    index = offset // SEED_STRIDE
    if (offset % SEED_STRIDE).any() or (index != index[0]).any() or index[0] < 0:
        return "mixed"
    return int(index[0])


def _rounds_text(rows: dict[int, int]) -> str:
    shown = ", ".join(f"r{rid}: {n}" for rid, n in sorted(rows.items())[:6])
    return shown + (", ..." if len(rows) > 6 else "") if rows else "no rounds"


def judge(state: State, code: str, seed_base: int, data: dict[str, np.ndarray]) -> Finding:
    """Pure: what ``data`` (a loaded final.npz) is to object ``code``."""
    obj = state.objects[code]
    owner = _owner(data, seed_base)
    if owner == "mixed":
        return Finding(FOREIGN, "final.npz holds seeds of no single object of this "
                                "experiment (not seed_base + index x 100000 + round_id)")
    if owner is not None and owner != obj.index:
        others = {o.index: c for c, o in state.objects.items()}
        whose = f"{others[owner]}'s" if owner in others else "another experiment's or object's"
        return Finding(FOREIGN, f"final.npz holds {whose} grasps (the seeds of object index "
                                f"{owner}), not {code}'s (index {obj.index})", owner=owner)
    held, expected = _held(data), delivered(state, code)
    if held == expected:
        if obj.final_digest and final.digest(data) != obj.final_digest:
            return Finding(ALTERED, "final.npz holds the rounds and rows the run wrote, with "
                                    "other values (its digest differs)")
        return Finding(OK)
    return _consistent(state, code, held, expected, len(data["round_id"]))


def _consistent(state: State, code: str, held: dict[int, int], expected: dict[int, int],
                rows: int) -> Finding:
    """A file that is not the recorded write may still be one this run wrote (a kill
    before its event, an earlier file kept when a later write failed): whole rounds in
    (round_id) order, only the last one cut, and only where it meets the target."""
    obj = state.objects[code]
    last = max(held, default=None)
    for rid, n in sorted(held.items()):
        rnd = obj.rounds.get(rid)
        most = None if rnd is None or rnd.status not in (*HAS_GRASPS, RoundStatus.DISCARDED) \
            else (rnd.unique if rnd.unique is not None else rnd.accepted)
        if most is None or n > most:
            return Finding(ALTERED, f"final.npz holds {n} grasps of round {rid}, which the run "
                                    f"never delivered ({_rounds_text(held)})")
        judged = rnd.unique is not None or not state.policy.dedup  # its count is exact
        if judged and n < most and (rid != last or rows != obj.target):
            return Finding(ALTERED, f"final.npz holds {n} of round {rid}'s {most} grasps: the "
                                    f"file was cut, no write of the run leaves a round short "
                                    f"({_rounds_text(held)})")
    return Finding(STALE, f"final.npz holds {rows} grasps ({_rounds_text(held)}), the "
                          f"manifest recorded {obj.collected} ({_rounds_text(expected)})",
                   held=held)


def check(config: Any, state: State, code: str, path: Path | None = None,
          deep: bool = False) -> Finding:
    """``code``'s final.npz (or the file at ``path``) against the manifest. Without
    ``deep`` a file whose size and time are those recorded is trusted unread (one stat);
    any other is read and judged. A read finding carries the data."""
    obj = state.objects[code]
    path = path or paths.final(config.exp_dir, code)
    try:
        stat = path.stat()
    except FileNotFoundError:
        if obj.final_bytes is None and not delivered(state, code):
            return Finding(OK)  # nothing written yet
        return Finding(MISSING, "final.npz is missing")
    if not deep and obj.final_bytes is not None and \
            (stat.st_size, stat.st_mtime_ns) == (obj.final_bytes, obj.final_mtime_ns):
        finding = Finding(OK)
    else:
        try:
            data = final.grasp_columns(final.load(path))
        except final.DatasetError as exc:
            why = str(exc).removeprefix(f"{path}: ").removeprefix("unreadable: ")
            return Finding(UNREADABLE, f"final.npz is unreadable: {why}")
        finding = judge(state, code, config.seed_base, data)
        finding = Finding(finding.kind, finding.problem, finding.owner, finding.held, data)
    if finding.ok and obj.status == ObjectStatus.DONE and obj.collected < obj.target:
        return Finding(SHORT, f"final.npz holds {obj.collected} of {obj.target} grasps (the "
                              f"last write failed)", held=delivered(state, code),
                       data=finding.data)
    return finding


def restore(config: Any, state: State, stamp: str) -> list[tuple[str, str]]:
    """Repair the final.npz files that need it, renaming only (nothing is deleted): a file
    holding another object's grasps goes back to that object's folder when its own file
    is bad or gone and it is exactly what that object's manifest records; every other bad
    file is moved aside as ``final.npz.broken-{stamp}``. Returns (object code, what was
    done) lines; the objects left without a file are for a rerun to rebuild."""
    bad = {code: f for code in state.objects
           if (f := check(config, state, code)).kind in NEEDS_RECOVER}
    aside: dict[str, Path] = {}
    for code in bad:
        path = paths.final(config.exp_dir, code)
        aside[code] = path.rename(path.with_name(f"{path.name}.broken-{stamp}"))
    by_index = {o.index: c for c, o in state.objects.items()}
    done: list[tuple[str, str]] = []
    for code, finding in bad.items():
        owner = by_index.get(finding.owner) if finding.owner is not None else None
        target = paths.final(config.exp_dir, owner) if owner else None
        if owner and target and not target.exists() and \
                check(config, state, owner, path=aside[code], deep=True).ok:
            target.parent.mkdir(parents=True, exist_ok=True)
            aside[code].rename(target)
            done.append((owner, f"put back its final.npz, found in {code}'s folder"))
            continue
        done.append((code, f"moved aside {aside[code]} ({finding.problem})"))
    return done


def rebuild_note(config: Any, state: State, code: str, finding: Finding | None = None) -> str:
    """What a rerun does to rebuild ``code``'s final.npz from what the manifest records:
    rounds whole in the file kept, the others re-read from the folders kept or run again
    with the same seeds."""
    if code not in config.object_codes:
        return (f"{code} is not in the current object list: add it back, then rerun: "
                f"{config.command()}")
    obj = state.objects[code]
    in_file = (finding.held if finding is not None else None) or {}
    rounds = [r for r in obj.rounds.values()
              if r.status in HAS_GRASPS and (r.used or r.accepted)
              and in_file.get(r.round_id, 0) < (r.used or r.accepted or 0)]
    kept = sum(1 for r in rounds if paths.result(config, r.name, code).is_file())
    parts = [f"keeps the {len(in_file)} round(s) whole in final.npz"] if in_file else []
    if kept:
        parts.append(f"re-reads {kept} kept round folder(s)")
    if len(rounds) > kept:
        parts.append(f"runs again the {len(rounds) - kept} round(s) whose folders are gone, "
                     f"same names and seeds; on a GPU their grasps may differ slightly")
    return f"a rerun rebuilds it ({' and '.join(parts) or 'nothing to re-read'}): " \
           f"{config.command()}"


def advice(config: Any, state: State, code: str, finding: Finding) -> str:
    """The repair that works for ``finding``, as a hint to print after its problem."""
    if finding.kind in NEEDS_RECOVER:
        what = ("it puts each final.npz back in its own object's folder" if finding.kind
                == FOREIGN else "it moves the file aside; a rerun then rebuilds it")
        return f"repair with: {config.command('recover')} ({what})"
    return rebuild_note(config, state, code, finding)
