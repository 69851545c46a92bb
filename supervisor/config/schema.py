"""The config's schema: one frozen dataclass per TOML table, each key with its default
and its rules (min, max, choices, "auto"); ``Config`` is the whole resolved config.
Reading a TOML file into these is ``supervisor.config.load``.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from supervisor.config.toml import ConfigError, source as value_source

PLACEHOLDERS = frozenset({
    "name", "object_code", "batch_size", "num_iterations", "seed", "gpu", "python",
    "upstream_launcher",
})
REQUIRED_PLACEHOLDERS = ("name", "seed")
FILTER_KEYS = ("energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints")
CLEANUP_MODES = ("remove", "light")
PROBES = ("auto", "nvml", "static", "emulator")
BACKENDS = ("local", "ray", "slurm")
SLURM_MODES = ("auto", "steps", "jobs")
VALIDATORS = ("mujoco",)
# a [validate] command's placeholders ({python} as in [main])
VALIDATE_PLACEHOLDERS = frozenset({"results", "object_code", "out", "python", "seed", "name"})


@dataclass(frozen=True)
class MainSettings:
    command: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    output_dir: Path  # where main.py puts {name}/: cwd / "../data/experiments"
    threads: int = 2


@dataclass(frozen=True)
class ViewSettings:
    """``[view]``: the gallery's helper (``supervisor.gallery``), run in BimanGrasp's Python.
    ``command`` empty: the interpreter of ``[main] command`` (its first item); ``cwd``
    None: ``[main] cwd``; ``env`` goes over ``[main] env``."""
    command: tuple[str, ...] = ()
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 300.0
    workers: int = 0  # helpers at once; 0: one per CPU core
    grasps_per_object: int = 4  # the report's gallery

    def resolved(self, main: MainSettings) -> tuple[list[str], Path, dict[str, str]]:
        command = list(self.command) or [main.command[0]]
        return command, self.cwd or main.cwd, {**main.env, **self.env}


def _key(default: Any, **rules: Any) -> Any:
    """A config key: its default and how it is checked (min, max, choices, auto)."""
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class GpuSettings:
    probe: str = _key("auto", choices=PROBES)
    min_free_mib: int = _key(8000, min=0)
    # "auto": the level that makes the most grasps per second, found by measuring
    # (supervisor.core.packing), within what free memory admits
    max_rounds_per_gpu: int | str = _key(1, min=1, auto=True)
    round_memory_mib: int = _key(6000, min=0)
    poll_interval_s: float = _key(10.0, min=0.001)
    quarantine_after: int = _key(3, min=1)  # rounds failed in a row on one GPU
    nvml_timeout_s: float = _key(10.0, min=0.001)
    sample_interval_s: float = _key(10.0, min=0.001)  # utilisation samples for the report
    # "auto" packing: one more round must raise the card's grasps/s by this fraction...
    pack_gain: float = _key(0.1, min=0.0)
    # ...measured over this many seconds of rounds iterating at a level...
    pack_window_s: float = _key(60.0, min=0.001)
    # ...and a level that did not pay is tried again after this long (at least two rounds)
    pack_retest_s: float = _key(1800.0, min=0.0)


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = _key(3, min=1)
    max_consecutive_failed_rounds: int = _key(5, min=1)


@dataclass(frozen=True)
class TimeoutSettings:
    round_timeout_s: float = _key(0.0, min=0.0)  # 0: no limit on a round's total time
    stall_timeout_s: float = _key(1800.0, min=0.0)  # 0: no limit on time without output
    grace_s: float = _key(30.0, min=0.0)
    drain_deadline_s: float = _key(0.0, min=0.0)  # 0: a drain waits for every round


@dataclass(frozen=True)
class CleanupSettings:
    mode: str = _key("remove", choices=CLEANUP_MODES)


@dataclass(frozen=True)
class DiskSettings:
    min_free_gib: float = _key(5.0, min=0.0)  # 0: no check


@dataclass(frozen=True)
class LogSettings:
    progress_interval_s: float = _key(30.0, min=0.0)


@dataclass(frozen=True)
class BackendSettings:
    """Where rounds run: this machine's GPUs, or a Ray cluster's (``address``: "auto" for
    the cluster this machine belongs to, or "HOST:PORT"), or a Slurm cluster's (the rest:
    ``supervisor.backends.slurm``; "" leaves an option to the user's Slurm defaults)."""
    kind: str = _key("local", choices=BACKENDS)
    address: str = "auto"
    # Slurm: "auto" is steps inside an allocation (SLURM_JOB_ID set), jobs outside one
    mode: str = _key("auto", choices=SLURM_MODES)
    partition: str = _key("", blank=True)
    account: str = _key("", blank=True)
    qos: str = _key("", blank=True)
    time_limit: str = _key("", blank=True)  # per round, Slurm's format ("2:00:00")
    max_jobs: int = _key(16, min=1)  # rounds submitted at once (jobs mode)
    gres: str = _key("gpu:1", blank=True)  # what one round asks for
    sbatch_args: tuple[str, ...] = ()  # passed to sbatch as they are


@dataclass(frozen=True)
class ValidateSettings:
    """``[validate]``: grasps counted only once they hold in a physics simulation.

    ``kind = "mujoco"``: the built-in validator (``supervisor.validate``), DexGraspBench's
    force-closure test adapted to two hands, with the parameters below (DexGraspBench's
    values as defaults, docs/quality.md says where each comes from). Or ``command``: the
    lab's own validator, an argv with ``{results}`` (the round's result file as main.py
    wrote it), ``{object_code}``, ``{out}`` (an .npz it writes: ``passed``, one bool per
    grasp in the file's order, and optionally other per-grasp arrays, kept as columns),
    ``{seed}``, ``{name}`` (the round's), ``{python}``; run in ``cwd`` (default
    ``[main] cwd``). Neither: validation is off and nothing changes.
    """
    kind: str | None = None
    command: tuple[str, ...] = ()
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workers: int | str = _key("auto", min=1, auto=True)  # "auto": cores the rounds leave
    timeout_s: float = _key(600.0, min=0.001)  # one validation task (grasps of one round)
    max_attempts: int = _key(3, min=1)  # a task that crashes, hangs or writes junk
    object_mass_kg: float = _key(0.1, min=1e-6)
    force_n: float = _key(1.0, min=0.0)  # along each of the six axis directions in turn
    max_translation_m: float = _key(0.05, min=0.0)
    max_rotation_deg: float = _key(15.0, min=0.0)
    max_penetration_m: float = _key(0.01, min=0.0)  # initial penetration: rejected above
    friction: float = _key(0.6, min=0.0)  # sliding
    torsional_friction: float = _key(0.02, min=0.0)

    @property
    def enabled(self) -> bool:
        return self.kind is not None or bool(self.command)

    def protocol(self) -> dict[str, float]:
        """The built-in protocol's parameters."""
        return {name: getattr(self, name) for name in PROTOCOL_KEYS}

    def identity(self) -> dict[str, Any]:
        """What decides which grasps pass: a resumed run must not change it."""
        if not self.enabled:
            return {"enabled": False}
        if self.command:
            return {"command": list(self.command)}
        return {"kind": self.kind, **self.protocol()}


PROTOCOL_KEYS = ("object_mass_kg", "force_n", "max_translation_m", "max_rotation_deg",
                 "max_penetration_m", "friction", "torsional_friction")


SECTIONS: dict[str, type] = {
    "backend": BackendSettings,
    "gpu": GpuSettings, "retry": RetrySettings, "timeouts": TimeoutSettings,
    "cleanup": CleanupSettings, "disk": DiskSettings, "logs": LogSettings,
}


@dataclass(frozen=True)
class DedupSettings:
    enabled: bool = False
    joint_tol_rad: float = 0.05
    rotation_tol_rad: float = 0.05
    translation_tol_m: float = 0.005

    @classmethod
    def from_table(cls, table: Any, source: str) -> DedupSettings:
        """Validate the ``[dedup]`` TOML table; errors name ``dedup.<key>``."""
        if not isinstance(table, dict):
            raise ConfigError(source, "dedup", table, "a table")
        known = tuple(vars(cls()))
        for key, value in table.items():
            if key not in known:
                raise ConfigError(source, f"dedup.{key}", value,
                                  f"a known key (one of {', '.join(known)})")
        enabled = table.get("enabled", cls.enabled)
        if not isinstance(enabled, bool):
            raise ConfigError(source, "dedup.enabled", enabled, "true or false")
        limits = {"joint_tol_rad": math.inf, "rotation_tol_rad": math.pi,
                  "translation_tol_m": math.inf}
        tolerances = {}
        for key, upper in limits.items():
            value = table.get(key, getattr(cls, key))
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not 0 < value <= upper or not math.isfinite(value):
                bound = f" and <= pi ({math.pi:.6g})" if upper == math.pi else ""
                raise ConfigError(source, f"dedup.{key}", value,
                                  f"a finite number > 0{bound}")
            tolerances[key] = float(value)
        return cls(enabled=enabled, **tolerances)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Config:
    path: Path
    exp_name: str
    experiments_dir: Path
    object_codes: tuple[str, ...]
    target_count_per_object: int
    main: MainSettings
    round_batch_size: int = 512
    num_iterations: int = 10000
    seed_base: int = 0
    max_rounds: int = 1000
    merge_stride: int | str = "auto"
    resume: bool = True
    keep_intermediate: bool = False
    gpus: str | tuple[int, ...] = "all"
    gpu: GpuSettings = field(default_factory=GpuSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    filter: Mapping[str, float] = field(default_factory=dict)
    dedup: DedupSettings = field(default_factory=DedupSettings)
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)
    disk: DiskSettings = field(default_factory=DiskSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    backend: BackendSettings = field(default_factory=BackendSettings)
    view: ViewSettings = field(default_factory=ViewSettings)
    validate: ValidateSettings = field(default_factory=ValidateSettings)
    object_code_source: str = "object_code_list"
    overrides: tuple[str, ...] = ()  # the command line's overrides, for hints to repeat

    def source(self, key: str) -> str:
        """Where ``key``'s value came from: the file, or the command line over it."""
        return value_source(self.path, key, f"--{key}" in self.overrides)

    def command(self, sub: str = "") -> str:
        """The command that reaches this experiment again: ``python -m supervisor [sub]
        CONFIG`` plus the same overrides, for hints such as the recover command."""
        parts = ["python", "-m", "supervisor", *([sub] if sub else []), str(self.path),
                 *self.overrides]
        return " ".join(shlex.quote(p) for p in parts)

    @property
    def exp_dir(self) -> Path:
        return self.experiments_dir / self.exp_name

    def identity(self) -> dict[str, Any]:
        """What decides which grasps are in the dataset; a resumed run must match it."""
        return {
            "seed_base": self.seed_base,
            "round_batch_size": self.round_batch_size,
            "num_iterations": self.num_iterations,
            "command": list(self.main.command),
            "filter": dict(self.filter),
            # Tolerances of a disabled dedup cannot change a grasp: only "off" counts then.
            "dedup": self.dedup.to_json() if self.dedup.enabled else {"enabled": False},
            "validate": self.validate.identity(),
        }

    def snapshot(self) -> dict[str, Any]:
        """The whole resolved config as JSON data, stored in the manifest to rerun it."""
        data: dict[str, Any] = {"config_file": str(self.path)}
        for f in fields(self):
            if f.name in ("path", "object_codes", "object_code_source", "overrides"):
                continue
            data[f.name] = _jsonable(getattr(self, f.name))
        data["object_code_list"] = list(self.object_codes)
        return data


def _jsonable(value: Any) -> Any:
    if is_dataclass(value):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


