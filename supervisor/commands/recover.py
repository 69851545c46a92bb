"""``python -m supervisor recover CONFIG``: make an experiment resumable again after its
manifest or a final.npz was truncated or edited into nonsense.

Nothing is deleted: broken files are renamed ``*.broken-{timestamp}``. A readable manifest
is kept, and objects whose final.npz was broken are reopened, so that resuming reloads
their grasps from the round folders or reruns those rounds (same names, same seeds). An
unreadable manifest is rebuilt from the datasets and round folders: object indices come
from the seeds found there, round states from what each round left on disk.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from supervisor.dataset import final, integrity
from supervisor.core import events as ev, plan
from supervisor.storage import journal, manifest as mf, paths
from supervisor.storage import store as st
from supervisor.core.plan import SEED_STRIDE
from supervisor.config.schema import Config
from supervisor.core.records import RoundStatus
from supervisor.dataset.results import ResultError, read_accepted
from supervisor.run.resume import RefusedError
from supervisor.core.state import State
from supervisor.core.transitions import apply


def _aside(path: Path, stamp: str) -> Path:
    target = path.with_name(f"{path.name}.broken-{stamp}")
    path.rename(target)
    return target


def _round_ids(config: Config, code: str) -> list[int]:
    prefix = plan.round_name(config.exp_name, code, 0)[:-1]
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    if not config.main.output_dir.is_dir():
        return []
    ids = (pattern.match(p.name) for p in config.main.output_dir.iterdir())
    return sorted(int(m.group(1)) for m in ids if m)


def _folder_index(config: Config, code: str, rid: int) -> int | None:
    name = plan.round_name(config.exp_name, code, rid)
    path = paths.round_dir(config, name) / "results" / "config.txt"
    try:
        seed = int(re.search(r"\bseed=(\d+)", path.read_text()).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        return None
    return (seed - config.seed_base - rid) // SEED_STRIDE


def _object_from_files(config: Config, code: str, index: int,
                       data: dict[str, np.ndarray] | None) -> ev.ObjectRecovered:
    in_final: dict[int, int] = {}
    if data is not None:
        rids, counts = np.unique(data["round_id"], return_counts=True)
        in_final = dict(zip(rids.tolist(), counts.tolist()))
    folders = _round_ids(config, code)
    from_folders = {}
    for rid in folders:
        name = plan.round_name(config.exp_name, code, rid)
        try:
            produced, cols = read_accepted(
                paths.result(config, name, code), config.round_batch_size, config.filter,
                plan.round_seed(config.seed_base, index, rid), rid)
        except ResultError:
            continue
        from_folders[rid] = (produced, len(cols["round_id"]))
    return ev.ObjectRecovered(code, index, config.target_count_per_object, in_final,
                              from_folders, tuple(folders))


def _indices(config: Config, finals: dict[str, dict[str, np.ndarray]]) -> dict[str, int]:
    known: dict[str, int] = {}
    for code in config.object_codes:
        if code in finals and len(finals[code]["seed"]):
            data = finals[code]
            known[code] = int(data["seed"][0] - data["round_id"][0] - config.seed_base) \
                // SEED_STRIDE
            continue
        for rid in _round_ids(config, code):
            index = _folder_index(config, code, rid)
            if index is not None:
                known[code] = index
                break
    next_index = max(known.values(), default=-1) + 1
    for code in config.object_codes:
        if code not in known:
            known[code], next_index = next_index, next_index + 1
    return known


def _rebuild(config: Config, finals: dict[str, dict[str, np.ndarray]]) -> State:
    state = st.new_state(config)
    for code, index in _indices(config, finals).items():
        apply(state, _object_from_files(config, code, index, finals.get(code)))
    apply(state, ev.ObjectsRegistered(config.object_codes, config.target_count_per_object))
    return state


def _has_experiment(config: Config) -> bool:
    exp = config.exp_dir
    if any((exp / name).exists() for name in ("manifest.json", "journal.jsonl", "final")):
        return True
    return any(_round_ids(config, code) for code in config.object_codes)


def check_experiment(config: Config) -> None:
    if not _has_experiment(config):
        raise RefusedError(
            f"{config.exp_dir}: no experiment {config.exp_name!r} there (no manifest, "
            f"journal, datasets or round folders): nothing to recover; check --exp_name "
            f"and experiments_dir")


def recover(config: Config) -> list[str]:
    """Repair the experiment on disk; returns what was done, one line each."""
    check_experiment(config)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    report: list[str] = []
    path = paths.manifest(config.exp_dir)
    if path.exists():
        try:
            return _repair_finals(config, st.load_state(config), stamp)
        except (mf.ManifestError, journal.JournalError) as exc:
            report.append(f"moved aside {_aside(path, stamp)} ({exc})")
            journal_path = paths.journal(config.exp_dir)
            if journal_path.exists():
                report.append(f"moved aside {_aside(journal_path, stamp)}")
    finals: dict[str, dict[str, np.ndarray]] = {}
    for code in config.object_codes:
        final_path = paths.final(config.exp_dir, code)
        if not final_path.exists():
            continue
        try:
            finals[code] = final.load(final_path)
        except final.DatasetError as exc:
            report.append(f"moved aside {_aside(final_path, stamp)} ({exc})")
    state = _rebuild(config, finals)
    _save(config, state)
    for code in config.object_codes:
        by = state.tally[code].by_status
        report.append(f"{code}: index {state.objects[code].index}, "
                      f"{by[RoundStatus.MERGED]} round(s) in final.npz, "
                      f"{by[RoundStatus.FINISHED]} to reload from their folders, "
                      f"{by[RoundStatus.DISCARDED]} kept out of a delivered dataset")
    report.append(f"wrote {path}; resume with: {config.command()}")
    return report


def _repair_finals(config: Config, state: State, stamp: str) -> list[str]:
    """A readable manifest: put misplaced final.npz files back and move the other bad
    ones aside (integrity.restore); say what a rerun then rebuilds. The manifest stays
    as it is: resume rebuilds a missing final.npz from what it records."""
    report = [f"{code}: {line}" for code, line in integrity.restore(config, state, stamp)]
    left = 0
    for code in state.objects:
        finding = integrity.check(config, state, code)
        if not finding.ok:
            left += 1
            report.append(f"{code}: {finding.problem}; "
                          f"{integrity.rebuild_note(config, state, code, finding)}")
    if not report:
        return [f"{paths.manifest(config.exp_dir)} and the datasets are what the run "
                f"recorded: nothing to recover"]
    if not left:
        report.append("every final.npz is now what the run recorded")
    return report


def _save(config: Config, state: State) -> None:
    """The snapshot holds every event now: the journal starts empty."""
    mf.save(paths.manifest(config.exp_dir), mf.Encoder().dumps(state))
    paths.journal(config.exp_dir).unlink(missing_ok=True)
