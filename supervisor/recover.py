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

from supervisor import dataset, manifest as mf, plan
from supervisor.config import SEED_STRIDE, Config
from supervisor.manifest import ACTIVE, FINISHED, MERGED, PENDING, Manifest, ObjectRecord
from supervisor.results import ResultError
from supervisor.resume import manifest_path
from supervisor.rounds import RoundJob, read_result, round_dir


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
    path = round_dir(config, plan.round_name(config.exp_name, code, rid)) / "results/config.txt"
    try:
        seed = int(re.search(r"\bseed=(\d+)", path.read_text()).group(1))  # type: ignore[union-attr]
    except (OSError, AttributeError, ValueError):
        return None
    return (seed - config.seed_base - rid) // SEED_STRIDE


def _rebuild_object(config: Config, code: str, index: int,
                    final: dict[str, np.ndarray] | None) -> ObjectRecord:
    obj = ObjectRecord(code, index, config.target_count_per_object)
    in_final: dict[int, int] = {}
    if final is not None:
        rids, counts = np.unique(final["round_id"], return_counts=True)
        in_final = dict(zip(rids.tolist(), counts.tolist()))
    ids = set(in_final) | set(_round_ids(config, code))
    for rid in range(max(ids, default=-1) + 1):
        name = plan.round_name(config.exp_name, code, rid)
        rnd = mf.RoundRecord(rid, name, plan.round_seed(config.seed_base, index, rid))
        obj.rounds[rid] = rnd
        try:
            produced, cols = read_result(config, RoundJob(code, rid, name, rnd.seed, 0, 0))
            rnd.status, rnd.produced, rnd.accepted = FINISHED, produced, len(cols["round_id"])
        except ResultError:
            rnd.status = PENDING
        if rid in in_final:
            rnd.status = MERGED
            if rnd.accepted is None:
                rnd.produced = rnd.accepted = in_final[rid]
    return obj


def _rebuild(config: Config, finals: dict[str, dict[str, np.ndarray]]) -> Manifest:
    m = Manifest(config.exp_name, config.identity(), config.snapshot())
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
        m.objects[code] = _rebuild_object(config, code, known[code], finals.get(code))
    return m


def recover(config: Config) -> list[str]:
    """Repair the experiment on disk; returns what was done, one line each."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    report: list[str] = []
    finals: dict[str, dict[str, np.ndarray]] = {}
    broken_finals: list[str] = []
    for code in config.object_codes:
        path = dataset.final_path(config.exp_dir, code)
        if not path.exists():
            continue
        try:
            finals[code] = dataset.load(path)
        except dataset.DatasetError as exc:
            report.append(f"moved aside {_aside(path, stamp)} ({exc})")
            broken_finals.append(code)
    path = manifest_path(config)
    old: Manifest | None = None
    if path.exists():
        try:
            old = mf.load(path)
        except mf.ManifestError as exc:
            report.append(f"moved aside {_aside(path, stamp)} ({exc})")
    if old is not None:
        for code in broken_finals:
            if code in old.objects:
                old.objects[code].status = ACTIVE
                report.append(f"{code}: reopened; resume reloads or reruns its rounds")
        if not broken_finals:
            report.append(f"{path} and the datasets are readable: nothing to recover")
            return report
        mf.save(path, old.dumps())
        return report
    m = _rebuild(config, finals)
    mf.save(path, m.dumps())
    for obj in m.objects.values():
        states = [r.status for r in obj.rounds.values()]
        report.append(f"{obj.code}: index {obj.index}, {states.count(MERGED)} round(s) in "
                      f"final.npz, {states.count(FINISHED)} to reload from their folders, "
                      f"{states.count(PENDING)} to run again")
    report.append(f"wrote {path}; resume with: python -m supervisor {config.path}")
    return report
