"""Starting or resuming an experiment: open the state (snapshot + journal), check the
config against it, stop what a dead supervisor left running, and reconcile each
unfinished object with its files (final.npz and round folders).

Every change goes through the state machine as an event; this module only reads files
and processes and turns what it finds into events.
"""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from supervisor.dataset import final, integrity, validation
from supervisor.core import events as ev
from supervisor.storage import journal, manifest as mf, paths
from supervisor.storage import store as st
from supervisor.core.plan import MAX_SEED, SEED_STRIDE
from supervisor.config.schema import Config
from supervisor.dataset.final import Accumulator
from supervisor.storage.fsutil import remove_stale_temps
from supervisor.core.records import HAS_GRASPS, ObjectStatus, RoundStatus, now
from supervisor.dataset.results import ResultError, read_accepted
from supervisor.core.state import Effect, KillOrphans, State
from supervisor.storage.store import Store
from supervisor.config.toml import toml_value
from supervisor.backends.job import ROUND_ENV


class RefusedError(RuntimeError):
    """The experiment on disk does not allow this start; the message says what to do."""


def recover_hint(config: Config) -> str:
    return ("to rebuild it from the datasets and round folders run: "
            + config.command("recover"))


def open_state(config: Config) -> State:
    """The experiment's state as the snapshot and journal leave it (read only)."""
    try:
        return st.load_state(config)
    except (mf.ManifestError, journal.JournalError) as exc:
        raise RefusedError(f"{exc}; {recover_hint(config)}") from None


# identity keys added since the first manifests, and what an experiment without them had
IDENTITY_BEFORE: dict[str, Any] = {"validate": {"enabled": False}}


def open_experiment(config: Config) -> State:
    """A new state, or the stored one checked against the config."""
    path = paths.manifest(config.exp_dir)
    if not path.exists():
        return st.new_state(config)
    if not config.resume:
        raise RefusedError(
            f"{path} exists: experiment {config.exp_name!r} was started before. Resume it "
            f"with --resume (resume = true), or pick a new exp_name; nothing was changed")
    state = open_state(config)
    for key, value in config.identity().items():
        # an experiment from before [validate] existed validated nothing
        stored = state.identity.get(key, IDENTITY_BEFORE.get(key, value))
        if stored != value and key == "validate" and IDENTITY_BEFORE[key] in (value, stored):
            on = value != IDENTITY_BEFORE[key]
            raise RefusedError(
                f"{config.source(key)}: [validate] is {'on' if on else 'off'}, but the "
                f"rounds so far in {path} were {'not ' if on else ''}validated; it would "
                f"change which grasps are in the datasets. Restore it, or pick a new "
                f"exp_name")
        if stored != value:
            name, now, before = _changed(key, value, stored)
            raise RefusedError(
                f"{config.source(key)}: {name} = {toml_value(now)} differs from "
                f"{toml_value(before)} used so far in "
                f"{path}; it would change which grasps are in the datasets. Restore it, or "
                f"pick a new exp_name")
    for code in config.object_codes:
        obj = state.objects.get(code)
        if obj is not None and config.target_count_per_object < obj.target:
            raise RefusedError(
                f"{config.source('target_count_per_object')}: target_count_per_object = "
                f"{config.target_count_per_object} "
                f"is lower than {obj.target} used so far for {code!r}; datasets are never "
                f"shrunk. Raise it, or pick a new exp_name")
    state.identity, state.config = config.identity(), config.snapshot()
    return state


def _changed(key: str, now: Any, before: Any) -> tuple[str, Any, Any]:
    """The config key that changed, named as in the TOML file ([filter] max_E_pen...)."""
    if not (isinstance(now, dict) and isinstance(before, dict)):
        return key, now, before
    sub = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))[0]
    prefix = "max_" if key == "filter" else ""
    return f"{key}.{prefix}{sub}", now.get(sub, "(unset)"), before.get(sub, "(unset)")


def validator_record(config: Config) -> dict[str, Any]:
    """[validate] for the run's record in the manifest: the validator, and the MuJoCo that
    the built-in one runs on (read from the installed package: nothing is imported)."""
    record = config.validate.identity() if config.validate.enabled else {}
    if config.validate.kind == "mujoco":
        record["mujoco"] = importlib.metadata.version("mujoco")
    return record


def start(config: Config, state: State, gpus: list[int]) -> tuple[Store, list[Effect],
                                                                   list[tuple[str, int]]]:
    """Register the objects and this start; kill orphaned round groups before the start
    is journaled (so that a kill here leaves their pids recorded for the next try)."""
    store = Store(config, state)
    effects = store.record(ev.ObjectsRegistered(config.object_codes,
                                                config.target_count_per_object))
    top = max(o.index for o in state.objects.values())
    if config.seed_base + (top + 1) * SEED_STRIDE - 1 > MAX_SEED:
        raise RefusedError(
            f"{config.path}: seed_base = {config.seed_base} with object index {top} gives "
            f"seeds above {MAX_SEED} (numpy's limit); lower seed_base or use a new exp_name")
    started = store.record(ev.SupervisorStarted(
        os.getpid(), socket.gethostname(), tuple(sys.argv), now(), str(config.main.cwd),
        dict(config.main.env), tuple(gpus), validator_record(config)))
    stopped: list[tuple[str, int]] = []
    for effect in started:
        if isinstance(effect, KillOrphans):
            stopped += kill_orphans(effect.rounds)
        else:
            effects.append(effect)
    return store, effects, stopped


# -- orphans -----------------------------------------------------------------------------
def _processes() -> dict[int, list[tuple[int, int, bytes]]]:
    """Live processes by process group: (pid, start time in ticks, cmdline)."""
    groups: dict[int, list[tuple[int, int, bytes]]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            groups.setdefault(int(fields[2]), []).append((int(entry.name), int(fields[19]),
                                                          cmdline))
    return groups


def _members(groups: dict[int, list[tuple[int, int, bytes]]], name: str, pgid: int,
             started: int | None) -> list[int]:
    """Live processes of the round's process group.

    While the leader lives, it must be the round's own (same start time, or, for records
    without one, a command line naming the round): a reused pid is left alone. Once the
    leader is gone, Linux cannot hand its pid to a new group while members of the old
    one live, so every process still in that group is the round's.
    """
    members = groups.get(pgid, [])
    leader = next(((ticks, cmd) for pid, ticks, cmd in members if pid == pgid), None)
    if leader is None:
        alive = any(pid == pgid for group in groups.values() for pid, _, _ in group)
        # The round's pid was free for reuse once its leader died: a later process may
        # have led a group of that number and left (a shell's job). Only processes that
        # inherited the round's environment are the round's.
        return [] if alive else [pid for pid, _, _ in members if _of_round(pid, name)]
    ticks, cmd = leader
    ours = ticks == started if started is not None else name.encode() in cmd.split(b"\0")
    return [pid for pid, _, _ in members] if ours else []


def _of_round(pid: int, name: str) -> bool:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    return f"{ROUND_ENV}={name}".encode() in environ


def kill_orphans(rounds: tuple[tuple[str, int, int | None], ...],
                 wait_s: float = 10.0) -> list[tuple[str, int]]:
    """SIGKILL every process of the recorded rounds' groups, grandchildren included."""
    stopped = []
    groups = _processes()
    for name, pgid, started in rounds:
        pids = _members(groups, name, pgid, started)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if pids:
            stopped.append((name, pgid))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        groups = _processes()
        if not any(_members(groups, n, p, s) for n, p, s in rounds):
            break
        time.sleep(0.01)
    return stopped


# -- grasps ------------------------------------------------------------------------------
def load_grasps(config: Config, store: Store) -> tuple[dict[str, Accumulator], list[Effect],
                                                       list[tuple[str, tuple[str, ...]]]]:
    """Accumulators for unfinished objects, from final.npz plus round folders; and the
    round folders of done objects that a kill left behind (to clean). A done object whose
    final.npz is missing, short or stale is reloaded, which rebuilds it; one that is
    unreadable, foreign or altered is refused: recover repairs it first."""
    state = store.state
    accs: dict[str, Accumulator] = {}
    effects: list[Effect] = []
    leftovers = []
    for code, finding in _findings(config, state).items():
        obj = state.objects[code]
        path = paths.final(config.exp_dir, code)
        if obj.status == ObjectStatus.DONE and finding.ok:
            names = tuple(r.name for r in obj.rounds.values()
                          if paths.round_dir(config, r.name).exists())
            if names:
                leftovers.append((code, names))
            continue
        held = any(r.status in (*HAS_GRASPS, RoundStatus.DISCARDED, RoundStatus.VALIDATING)
                   and r.accepted is not None for r in obj.rounds.values())
        if not held and not path.exists():
            continue  # nothing produced yet: nothing to reconcile
        acc, event = _reload(config, state, code, path, finding.data)
        accs[code] = acc
        effects += store.record(event)
    return accs, effects, leftovers


def _findings(config: Config, state: State) -> dict[str, integrity.Finding]:
    """This run's active and done objects with what their final.npz is; refused, naming
    every one, when one needs recover."""
    remove_stale_temps(config.exp_dir)
    findings = {}
    for code in state.order:
        remove_stale_temps(paths.final(config.exp_dir, code).parent)
        if state.objects[code].status in (ObjectStatus.DONE, ObjectStatus.ACTIVE):
            findings[code] = integrity.check(config, state, code)
    bad = {c: f for c, f in findings.items() if f.kind in integrity.NEEDS_RECOVER}
    if bad:
        code, first = next(iter(bad.items()))
        listed = "; ".join(f"{c}: {f.problem}" for c, f in bad.items())
        raise RefusedError(f"{len(bad)} final.npz not what the run delivered ({listed}); "
                           f"{integrity.advice(config, state, code, first)}")
    return findings


def _reload(config: Config, state: State, code: str, path: Path,
            data: dict[str, np.ndarray] | None) -> tuple[Accumulator, ev.ObjectReloaded]:
    """``data``: final.npz as integrity.check read it (None: not read yet)."""
    obj = state.objects[code]
    acc = Accumulator()
    found: tuple[int | None, int | None, str | None] = (None, None, None)
    if path.exists():
        stat = path.stat()
        if data is None:
            data = final.grasp_columns(final.load(path))  # checked: readable
        acc = Accumulator.from_columns(data)
        found = (stat.st_size, stat.st_mtime_ns, final.digest(data))
    in_final = {rid: len(cols["round_id"]) for rid, cols in acc.rounds.items()}
    from_folders: dict[int, tuple[int, int]] = {}
    missing: dict[int, str] = {}
    validating: list[int] = []  # [validate]: rounds whose grasps are still to validate
    for rnd in obj.rounds.values():
        todo = state.policy.validate and rnd.passed is None and rnd.accepted is not None \
            and rnd.status in (RoundStatus.VALIDATING, RoundStatus.DISCARDED)
        if not todo and (rnd.status not in (*HAS_GRASPS, RoundStatus.DISCARDED)
                         or rnd.accepted is None):
            continue
        if not todo and in_final.get(rnd.round_id, 0) == state.grasps_of(rnd):
            continue  # wholly in final.npz (with [dedup]: its unique grasps)
        try:
            produced, cols = read_accepted(
                paths.result(config, rnd.name, code), config.round_batch_size, config.filter,
                rnd.seed, rnd.round_id)
            accepted = len(cols["round_id"])
            if state.policy.validate and not todo:  # validated: what passed, as then
                items, figures = validation.read(validation.path(config.exp_dir, code,
                                                                 rnd.round_id))
                cols = validation.apply(cols, items, figures)
        except (ResultError, validation.ValidationError) as exc:
            missing[rnd.round_id] = str(exc)
            continue
        acc.add(rnd.round_id, cols)
        from_folders[rnd.round_id] = (produced, accepted)
        if todo:
            validating.append(rnd.round_id)
    return acc, ev.ObjectReloaded(code, in_final, from_folders, missing, *found,
                                  validating=tuple(validating))
