"""Report at scale: a synthetic finished experiment, then the time and size of its report.

    python bench/report.py [--objects 2000] [--rounds 30] [--gpus 32] [--keep DIR]

Writes manifest.json (objects x rounds, with failed, retried, interrupted and discarded
attempts), GPU samples every 10 s over the whole run (gpu_samples.bin: records for each
GPU, with the round running there), and a final.npz of ``--target`` grasps per object,
in a temporary folder (or DIR). Then builds the report as ``python -m supervisor report``
does and prints its build time and size against the limits (10 s, 15 MB); exit 1 if over.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from supervisor.commands.report import page as report
from supervisor.gpus import samples  # noqa: E402
from supervisor.dataset.results import QPOS_NAMES  # noqa: E402

LIMIT_S, LIMIT_MB = 10.0, 15.0
INTERVAL_S = 10.0


def make_rounds(rng: np.random.Generator, n_objects: int, n_rounds: int, n_gpus: int,
                target: int, batch: int) -> tuple[dict, list[tuple[int, float, float, str]]]:
    """Objects and their rounds as a manifest's "objects", and every attempt that ran."""
    free = [(0.0, g) for g in range(n_gpus)]
    t0 = time.time() - 30 * 86_400
    objects, ran = {}, []
    for i in range(n_objects):
        code = f"core-bottle-{i:05d}{i * 2654435761 % 2**64:016x}{i:011x}"  # 44 chars, as real
        rounds, got = {}, 0
        for rid in range(n_rounds):
            name = f"bench__{code}__r{rid}"
            failures = []
            for attempt in range(1, 4):
                at, gpu = heapq.heappop(free)
                start = t0 + at + rng.uniform(1, 25)
                end = start + rng.lognormal(np.log(600), 0.25)
                heapq.heappush(free, (end - t0, gpu))
                ran.append((gpu, start, end, name))
                fate = rng.random()
                if fate < 0.05 and attempt < 3:
                    kind = "interrupted" if fate < 0.01 else "failed"
                    failures.append({"attempt": attempt, "kind": kind, "gpu": gpu,
                                     "reason": "exit code 1: CUDA error" if kind == "failed"
                                     else "supervisor stopped", "exit_code": 1, "at": end,
                                     "duration_s": round(end - start, 3)})
                    continue
                break
            produced = batch
            accepted = int(rng.binomial(batch, 0.25))
            status = "merged" if got < target else "discarded"
            used = min(accepted, target - got) if status == "merged" else 0
            got += used
            rounds[str(rid)] = {
                "round_id": rid, "name": name, "seed": i * 100_000 + rid, "status": status,
                "attempts": attempt, "gpu": gpu, "exit_code": 0, "produced": produced,
                "accepted": accepted, "used": used, "started_at": start, "finished_at": end,
                "reason": None, "pid": None, "failures": failures}
        objects[code] = {"index": i, "target": target, "status": "done" if got >= target
                         else "exhausted", "done": got >= target, "collected": got,
                         "consecutive_failures": 0, "reason": None, "rounds": rounds}
    return objects, ran


def write_samples(exp_dir: Path, rng: np.random.Generator, n_gpus: int,
                  ran: list[tuple[int, float, float, str]]) -> int:
    names = {name: i + 1 for i, name in enumerate(sorted({r[3] for r in ran}))}
    with open(exp_dir / samples.ROUNDS_NAME, "w") as f:
        for name, rid in names.items():
            f.write(json.dumps({"id": rid, "pid": 1000 + rid % 30000, "round": name,
                                "t": 0.0}) + "\n")
    t_all = np.arange(min(r[1] for r in ran), max(r[2] for r in ran), INTERVAL_S)
    parts = []
    for gpu in range(n_gpus):
        mine = sorted((s, e, names[n]) for g, s, e, n in ran if g == gpu)
        starts, ends, ids = (np.array(c) for c in zip(*mine))
        k = np.searchsorted(starts, t_all, side="right") - 1
        busy = (k >= 0) & (t_all <= ends[np.maximum(k, 0)])
        rec = np.zeros(len(t_all), samples.RECORD)
        rec["t"], rec["gpu"], rec["total_mib"] = t_all, gpu, 81_559
        rec["util"] = np.where(busy, rng.integers(70, 100, len(t_all)), 0)
        rec["round_mib"] = np.where(busy, rng.integers(18_000, 24_000, len(t_all)), 0)
        rec["used_mib"] = rec["round_mib"] + 500
        rec["round"] = np.where(busy, ids[np.maximum(k, 0)], 0)
        parts.append(rec)
    rec = np.concatenate(parts)
    rec = rec[np.argsort(rec["t"], kind="stable")]
    with open(samples.samples_path(exp_dir), "wb") as f:
        f.write(samples.MAGIC)
        rec.tofile(f)
    return len(rec)


def write_finals(exp_dir: Path, rng: np.random.Generator, codes: list[str], n: int) -> None:
    for i, code in enumerate(codes):
        folder = exp_dir / "final" / code
        folder.mkdir(parents=True)
        cols = {k: rng.normal(0, 0.3, (n, 28)) for k in
                ("qpos_left", "qpos_right", "qpos_left_st", "qpos_right_st")}
        cols.update(scale=np.full(n, 0.1), energy=rng.gamma(2, 1.2, n),
                    E_fc=rng.gamma(2, 0.2, n), E_dis=rng.gamma(1.5, 0.01, n),
                    E_pen=rng.uniform(0, 0.0015, n), E_spen=rng.gamma(1.2, 0.005, n),
                    E_joints=rng.exponential(0.002, n), seed=np.full(n, i, np.int64),
                    round_id=np.repeat(np.arange(n // 4 + 1), 4)[:n].astype(np.int64),
                    item_index=np.tile(np.arange(4), n // 4 + 1)[:n].astype(np.int64))
        np.savez(folder / "final.npz", qpos_names=np.array(QPOS_NAMES), **cols)


def make_experiment(exp_dir: Path, objects: int = 2000, rounds: int = 30, gpus: int = 32,
                    target: int = 100, seed: int = 7) -> str:
    """Write the synthetic experiment into ``exp_dir``; returns a line describing it."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    objs, ran = make_rounds(rng, objects, rounds, gpus, target, 16)
    first, last = min(r[1] for r in ran), max(r[2] for r in ran)
    manifest = {"version": 1, "exp_name": exp_dir.name, "created_at": first,
                "updated_at": last, "identity": {}, "runs": [],
                "config": {"round_batch_size": 16, "gpus": list(range(gpus)),
                           "filter": {"E_pen": 0.0015}}, "objects": objs}
    (exp_dir / "manifest.json").write_text(json.dumps(manifest))
    n_samples = write_samples(exp_dir, rng, gpus, ran)
    write_finals(exp_dir, rng, list(objs), target)
    return (f"{objects} objects x {rounds} rounds, {len(ran)} attempts on {gpus} GPUs over "
            f"{(last - first) / 86_400:.1f} days; manifest "
            f"{(exp_dir / 'manifest.json').stat().st_size / 1e6:.1f} MB, {n_samples:,} GPU "
            f"samples ({samples.samples_path(exp_dir).stat().st_size / 1e6:.0f} MB)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objects", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--gpus", type=int, default=32)
    p.add_argument("--target", type=int, default=100)
    p.add_argument("--keep", type=Path, help="write the experiment here and keep it")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exp_dir = (args.keep or Path(tmp)) / "bench"
        started = time.monotonic()
        what = make_experiment(exp_dir, args.objects, args.rounds, args.gpus, args.target)
        print(f"experiment: {what}; made in {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        out = report.write(exp_dir)
        build_s, size_mb = time.monotonic() - started, out.stat().st_size / 1e6
        ok = build_s < LIMIT_S and size_mb < LIMIT_MB
        print(f"report: {build_s:.2f} s (limit {LIMIT_S:g}), {size_mb:.1f} MB "
              f"(limit {LIMIT_MB:g}): {'ok' if ok else 'OVER'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
