"""Disk space: free-space checks, and removing round folders once their grasps are
safely in final.npz.

``remove`` deletes a round's folder; ``light`` keeps each round's ``config.txt`` and
result file and removes frames, videos, metrics and TensorBoard logs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterable

from supervisor.config.schema import Config


GIB = 1024**3


def short_of_space(config: Config) -> str | None:
    """Why a new round must wait for disk space, or None when there is enough."""
    need = config.disk.min_free_gib
    if need <= 0:
        return None
    for folder in (config.experiments_dir, config.main.output_dir):
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = shutil.disk_usage(probe).free / GIB
        if free < need:
            return f"{folder}: {free:.2f} GiB free < disk.min_free_gib {need:g}"
    return None


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_round(folder: Path, object_code: str, mode: str) -> None:
    if not folder.is_dir():
        return
    if mode == "remove":
        _remove(folder)
        return
    keep = {"config.txt", f"{object_code}.npy"}
    for entry in folder.iterdir():
        if entry.name != "results":
            _remove(entry)
            continue
        for item in entry.iterdir():
            if item.name not in keep:
                _remove(item)


def clean_rounds(config: Config, object_code: str, names: Iterable[str]) -> None:
    root = config.main.output_dir
    for name in names:
        folder = root / name
        if folder.parent == root and _inside(folder, root):
            clean_round(folder, object_code, config.cleanup.mode)
