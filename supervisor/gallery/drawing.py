"""What the gallery draws for each object, from the cache or from helpers: the hand
model's reference pose, each chosen grasp's link motions, the object's mesh. Objects are
drawn in parallel, one helper per worker thread (each loads the hand models once and then
draws object after object). Without a hand model that loads, each object says so in one
line and keeps what the data alone gives: its mesh from ``data/meshdata`` (read here, not
by the checkout) and the wrists (``meshes.wrist``).
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from supervisor.gallery import meshes
from supervisor.gallery.cache import Cache, checkout_stamp, grasp_key
from supervisor.gallery.client import Helper, HelperError, qpos_dict
from supervisor.gallery.meshes import Hands, MeshError

MAX_OBJECT_FACES = 4000  # decimated for a screen: a 300-pixel view shows no more
MESH_FILES = ("coacd/decomposed.obj", "decomposed.obj", "models/model.obj",
              "models/model_normalized.obj", "meshes/mesh.obj", "mesh/textured.obj",
              "textured.obj", "model.obj", "mesh.obj")  # where BimanGrasp looks


@dataclass(frozen=True)
class View:
    """``[view]``, resolved: how to start the helper."""
    command: list[str]
    cwd: Path
    env: dict[str, str]
    timeout_s: float
    workers: int


@dataclass
class Job:
    code: str
    data: dict[str, np.ndarray]
    rows: list[int]
    whys: list[str] = field(default_factory=list)  # why each row was chosen
    keys: list[str] = field(default_factory=list)
    motions: list[dict[str, np.ndarray] | None] = field(default_factory=list)
    mesh: tuple[np.ndarray, np.ndarray, str] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = [grasp_key(self.data, r) for r in self.rows]
        self.motions = [None] * len(self.rows)


@dataclass
class Drawn:
    hands: Hands | None
    fingerprint: str | None
    jobs: list[Job]
    note: str | None  # one line for all objects (no hand model)
    helpers: int = 0
    cache: Cache | None = None  # its ``problem``: one line when it could not be written


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    vs, fs = [], []
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("v "):
                vs.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                idx = [int(p.split("/")[0]) for p in line.split()[1:]]
                idx = [i - 1 if i > 0 else len(vs) + i for i in idx]
                fs += [[idx[0], idx[k], idx[k + 1]] for k in range(1, len(idx) - 1)]
    return np.array(vs, np.float64).reshape(-1, 3), np.array(fs, np.int64).reshape(-1, 3)


def meshdata_mesh(cwd: Path, code: str) -> tuple[np.ndarray, np.ndarray] | None:
    for rel in MESH_FILES:
        path = cwd / ".." / "data" / "meshdata" / code / rel
        if path.is_file():
            try:
                v, f = read_obj(path)
            except (OSError, ValueError, IndexError):
                return None
            return (v, f) if len(v) and len(f) else None
    return None


def _from_cache(cache: Cache, fingerprint: str | None, job: Job) -> bool:
    """Fill what the cache has; True when the job needs a helper."""
    job.mesh = cache.mesh(job.code)
    if fingerprint is not None:
        job.motions = [cache.motion(job.code, fingerprint, k) for k in job.keys]
    return job.mesh is None or (fingerprint is None or any(m is None for m in job.motions))


def _draw(helper: Helper, cache: Cache, hands: Hands, fingerprint: str, job: Job,
          names: Sequence[str]) -> None:
    if job.mesh is None:
        try:
            got = helper.load(helper.request(op="object", code=job.code)["path"])
            v, f = meshes.decimate(got["v0"], got["f0"], MAX_OBJECT_FACES)
            cache.put_mesh(job.code, v, f, "checkout")
            job.mesh = (v, f, "checkout")
        except (HelperError, KeyError) as exc:
            job.notes.append(f"object mesh not drawn: {exc}")
    for n, (row, key) in enumerate(zip(job.rows, job.keys)):
        if job.motions[n] is not None:
            continue
        got = helper.load(helper.request(
            op="grasp", id=f"g{row}", qpos_left=qpos_dict(job.data["qpos_left"][row], names),
            qpos_right=qpos_dict(job.data["qpos_right"][row], names))["path"])
        job.motions[n] = meshes.motions(hands, got)
        cache.put_motion(job.code, fingerprint, key, job.motions[n])


def _fallback(view: View, cache: Cache, job: Job) -> None:
    if job.mesh is None:
        found = meshdata_mesh(view.cwd, job.code)
        if found is not None:
            v, f = meshes.decimate(*found, MAX_OBJECT_FACES)
            job.mesh = (v, f, "meshdata")


class _Helpers:
    """Worker threads, one helper each, taking objects off one queue."""

    def __init__(self, view: View, cache: Cache, stamp: str, hands: Hands | None,
                 fingerprint: str | None, todo: list[Job], names: list[str]) -> None:
        self.view, self.cache, self.stamp, self.todo, self.names = view, cache, stamp, todo, names
        self.hands, self.fingerprint = hands, fingerprint
        self.work: queue.Queue[Job] = queue.Queue()
        for job in todo:
            self.work.put(job)
        self.error: str | None = None
        self.lock = threading.Lock()

    def _start(self) -> Helper:
        helper = Helper(self.view.command, self.view.cwd, self.view.env, self.view.timeout_s)
        with self.lock:  # the first helper draws the reference pose; the others wait
            first = self.hands is None
            if first:
                try:
                    ref = Hands.from_arrays(helper.load(helper.request(op="hands")["path"]))
                except BaseException:
                    helper.close()
                    raise
                self.fingerprint, self.hands = self.cache.put_hands(self.stamp, ref), ref
                for job in self.todo:
                    _from_cache(self.cache, self.fingerprint, job)
        if not first:
            helper.request(op="hands")  # loads the models in this helper
        return helper

    def worker(self) -> None:
        try:
            helper = self._start()
        except (HelperError, MeshError, KeyError, OSError) as exc:
            self.error = self.error or str(exc)
            return
        try:
            while True:
                try:
                    job = self.work.get_nowait()
                except queue.Empty:
                    return
                assert self.hands is not None and self.fingerprint is not None
                try:
                    _draw(helper, self.cache, self.hands, self.fingerprint, job, self.names)
                except (HelperError, MeshError, KeyError, OSError) as exc:
                    job.notes.append(f"grasps not drawn: {exc}")
                    if helper.proc.poll() is not None:  # it died: a fresh one goes on
                        helper.close()
                        helper = self._start()
        except (HelperError, MeshError, KeyError, OSError) as exc:
            self.error = self.error or str(exc)
        finally:
            helper.close()


def draw(view: View, experiment_dir: Path, jobs: list[Job],
         cache: Cache | None = None) -> Drawn:
    cache = cache or Cache(experiment_dir)
    stamp = checkout_stamp(view.cwd, view.command)
    known = cache.hands_for(stamp)
    fingerprint, hands = known if known else (None, None)
    todo = [j for j in jobs if _from_cache(cache, fingerprint, j)]
    if not todo:
        return Drawn(hands, fingerprint, jobs, None, cache=cache)
    names = [str(n) for n in jobs[0].data["qpos_names"]]
    pool = _Helpers(view, cache, stamp, hands, fingerprint, todo, names)
    count = max(1, min(view.workers or os.cpu_count() or 1, len(todo)))
    threads = [threading.Thread(target=pool.worker, daemon=True) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    note = None
    if pool.hands is None:
        note = f"hands not drawn: {pool.error or 'the helper did not start'}"
    for job in jobs:
        if pool.hands is not None and any(m is None for m in job.motions) and not job.notes:
            job.notes.append(f"grasps not drawn: {pool.error or 'the helper failed'}")
        _fallback(view, cache, job)
    return Drawn(pool.hands, pool.fingerprint, jobs, note, count, cache)
