"""Starting or resuming an experiment: open the manifest, check the config against it,
and rebuild each unfinished object's grasps from final.npz and the round folders.

The merger writes the manifest before final.npz, so after a kill the manifest may name
rounds as merged that final.npz lacks: their grasps are read again from their round
folders (which are only removed after final.npz is written), or the round runs again with
the same name and seed.
"""

from __future__ import annotations

import os
import signal
import time
import zipfile
from pathlib import Path

import numpy as np

from supervisor import dataset, manifest as mf
from supervisor.config import Config
from supervisor.dataset import Accumulator
from supervisor.fsutil import remove_stale_temps
from supervisor.manifest import (
    ACTIVE, DISCARDED, DONE, EXHAUSTED, FINISHED, HAS_GRASPS, INTERRUPTED, MERGED,
    OBJ_FAILED, PENDING, RUNNING, Manifest, ObjectRecord, RoundRecord,
)
from supervisor.results import ResultError
from supervisor.rounds import RoundJob, read_result


class RefusedError(RuntimeError):
    """The experiment on disk does not allow this start; the message says what to do."""


def manifest_path(config: Config) -> Path:
    return config.exp_dir / mf.MANIFEST_NAME


def recover_hint(config: Config) -> str:
    return (f"to rebuild it from the datasets and round folders run: python -m supervisor "
            f"recover {config.path}")


def open_manifest(config: Config) -> Manifest:
    path = manifest_path(config)
    if not path.exists():
        return Manifest(config.exp_name, config.identity(), config.snapshot())
    if not config.resume:
        raise RefusedError(
            f"{path} exists: experiment {config.exp_name!r} was started before. Resume it "
            f"with --resume (resume = true), or pick a new exp_name; nothing was changed")
    try:
        m = mf.load(path)
    except mf.ManifestError as exc:
        raise RefusedError(f"{exc}; {recover_hint(config)}") from None
    for key, value in config.identity().items():
        if m.identity.get(key) != value:
            raise RefusedError(
                f"{config.path}: {key} = {value!r} differs from {m.identity.get(key)!r} used "
                f"so far in {path}; it would change existing grasps. Restore it, or pick a "
                f"new exp_name")
    m.config = config.snapshot()
    return m


def register_objects(config: Config, m: Manifest) -> list[str]:
    """Add new objects with fixed indices; raise targets; give failed objects a new chance.

    Returns the codes whose status changed, for logging.
    """
    changed = []
    for code in config.object_codes:
        obj = m.objects.get(code)
        target = config.target_count_per_object
        if obj is None:
            m.objects[code] = ObjectRecord(code, m.next_index(), target)
            continue
        if target < obj.target:
            raise RefusedError(
                f"{config.path}: target_count_per_object = {target} is lower than {obj.target} "
                f"used so far for {code!r}; datasets are never shrunk. Raise it, or pick a "
                f"new exp_name")
        if target > obj.target or obj.status in (OBJ_FAILED, EXHAUSTED):
            obj.target = target
            if obj.status != ACTIVE:
                obj.status, obj.consecutive_failures, obj.reason = ACTIVE, 0, None
                changed.append(code)
    return changed


def _is_round_process(pid: int, name: str) -> bool:
    """Is ``pid`` still a live process whose command line holds this round's name?"""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and name.encode() in cmdline


def stop_orphans(m: Manifest, wait_s: float = 10.0) -> list[tuple[str, int]]:
    """Rounds the manifest says are running get rerun: first kill any child of a dead
    supervisor still running them (normally PR_SET_PDEATHSIG has done so already)."""
    stopped = []
    for obj in m.objects.values():
        for rnd in obj.rounds.values():
            if rnd.status != RUNNING:
                continue
            if rnd.pid and _is_round_process(rnd.pid, rnd.name):
                try:
                    os.killpg(rnd.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                deadline = time.monotonic() + wait_s
                while _is_round_process(rnd.pid, rnd.name) and time.monotonic() < deadline:
                    time.sleep(0.01)
                stopped.append((rnd.name, rnd.pid))
            rnd.status, rnd.pid = INTERRUPTED, None
            rnd.attempts = max(0, rnd.attempts - 1)
    return stopped


def _job(obj: ObjectRecord, rnd: RoundRecord) -> RoundJob:
    return RoundJob(obj.code, rnd.round_id, rnd.name, rnd.seed, rnd.gpu or 0, rnd.attempts)


def _final_is_complete(path: Path, target: int) -> bool:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return len(npz["round_id"]) == target
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False  # unreadable: rebuilding it refuses with the recover hint


def load_grasps(config: Config, m: Manifest) -> dict[str, Accumulator]:
    """Accumulators for every unfinished object, from final.npz plus round folders."""
    accs = {}
    remove_stale_temps(config.exp_dir)
    for code in config.object_codes:
        obj = m.objects[code]
        path = dataset.final_path(config.exp_dir, code)
        remove_stale_temps(path.parent)
        if obj.status == DONE and _final_is_complete(path, obj.target):
            continue
        if obj.status == DONE:  # killed between the manifest and final.npz writes
            obj.status = ACTIVE
        accs[code] = _rebuild(config, obj, path)
    return accs


def _rebuild(config: Config, obj: ObjectRecord, path: Path) -> Accumulator:
    acc = Accumulator()
    if path.exists():
        try:
            acc = Accumulator.from_columns(dataset.grasp_columns(dataset.load(path)))
        except dataset.DatasetError as exc:
            raise RefusedError(f"{exc}; {recover_hint(config)}") from None
    for rid, cols in acc.rounds.items():
        rnd = obj.rounds.get(rid)
        if rnd is None:
            raise RefusedError(f"{path}: holds grasps of round {rid}, which {config.exp_dir}/"
                               f"manifest.json does not know; {recover_hint(config)}")
        if rnd.status not in HAS_GRASPS:
            rnd.status, rnd.accepted = MERGED, len(cols["round_id"])
            rnd.produced = rnd.produced or rnd.accepted
    for rnd in obj.rounds.values():
        if rnd.status not in (*HAS_GRASPS, DISCARDED) or rnd.accepted is None:
            if rnd.status == DISCARDED:
                rnd.status = PENDING
            continue
        have = len(acc.rounds[rnd.round_id]["round_id"]) if rnd.round_id in acc.rounds else 0
        if have == rnd.accepted:
            rnd.status = MERGED
            continue
        try:
            produced, cols = read_result(config, _job(obj, rnd))
            acc.add(rnd.round_id, cols)
            rnd.status, rnd.produced, rnd.accepted = FINISHED, produced, len(cols["round_id"])
        except ResultError as exc:
            if have:
                # Part of it is in final.npz (the object was done, then its target raised,
                # and its folder is gone): keep what was merged, never rerun over it.
                rnd.status, rnd.accepted, rnd.used = MERGED, have, have
                continue
            rnd.status, rnd.produced, rnd.accepted, rnd.used = PENDING, None, None, None
            rnd.reason = f"grasps not in final.npz and {exc}; running it again"
    obj.collected = sum(len(c["round_id"]) for rid, c in acc.rounds.items()
                        if obj.rounds[rid].status == MERGED)
    return acc
