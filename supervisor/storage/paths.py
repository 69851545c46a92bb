"""Where an experiment's files live: one place for every path.

``{experiments_dir}/{exp_name}/``: ``manifest.json`` (snapshot), ``journal.jsonl``
(events since the snapshot), ``final/{object_code}/final.npz``, ``logs/``,
``supervisor.lock``, ``gpu_samples.bin``. Round folders are main.py's own:
``{main.output_dir}/{round name}/results/{object_code}.npy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.core import slots
from supervisor.core.slots import GpuKey

if TYPE_CHECKING:
    from supervisor.config.schema import Config

MANIFEST_NAME = "manifest.json"
JOURNAL_NAME = "journal.jsonl"
FINAL_NAME = "final.npz"
LOCK_NAME = "supervisor.lock"
SAMPLES_NAME = "gpu_samples.bin"  # and gpu_samples.rounds.jsonl (supervisor.gpus.samples)


def manifest(exp_dir: Path) -> Path:
    return exp_dir / MANIFEST_NAME


def journal(exp_dir: Path) -> Path:
    return exp_dir / JOURNAL_NAME


def final(exp_dir: Path, object_code: str) -> Path:
    return exp_dir / "final" / object_code / FINAL_NAME


def lock(exp_dir: Path) -> Path:
    return exp_dir / LOCK_NAME


def samples(exp_dir: Path) -> Path:
    return exp_dir / SAMPLES_NAME


def round_log(exp_dir: Path, name: str) -> Path:
    return exp_dir / "logs" / "rounds" / f"{name}.log"


def gpu_log(exp_dir: Path, gpu: GpuKey) -> Path:
    return exp_dir / "logs" / slots.file_name(gpu)


def round_dir(config: Config, name: str) -> Path:
    return config.main.output_dir / name


def result(config: Config, name: str, object_code: str) -> Path:
    return round_dir(config, name) / "results" / f"{object_code}.npy"
