"""The config: one TOML file, validated completely before anything is written.

Every error names the file, the key, the bad value and the expected form, e.g.
``config.toml: round_batch_size = 0: expected an integer >= 1``.
"""

from __future__ import annotations

import shlex
import string
import sys
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from supervisor.dedup import DedupSettings
from supervisor.objectlist import check_lengths, object_codes, resolve
from supervisor.validate import (  # noqa: F401 (ConfigError, one_line: the API)
    ConfigError, Reader, check_name, one_line, read_settings,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLACEHOLDERS = frozenset({
    "name", "object_code", "batch_size", "num_iterations", "seed", "gpu", "python",
    "upstream_launcher",
})
REQUIRED_PLACEHOLDERS = ("name", "seed")
# Seeds are seed_base + object_index * SEED_STRIDE + round_id: round ids must stay below it.
SEED_STRIDE = 100_000
MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which main.py uses, takes seeds < 2**32
FILTER_KEYS = ("energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints")
CLEANUP_MODES = ("remove", "light")
PROBES = ("auto", "nvml", "static")
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class MainSettings:
    command: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    output_dir: Path  # where main.py puts {name}/: cwd / "../data/experiments"
    threads: int = 2


def _key(default: Any, **rules: Any) -> Any:
    """A config key: its default and how it is checked (min, max, choices, auto)."""
    return field(default=default, metadata=rules)


@dataclass(frozen=True)
class GpuSettings:
    probe: str = _key("auto", choices=PROBES)
    min_free_mib: int = _key(8000, min=0)
    # "auto": as many rounds as free memory admits (the footprint learned from NVML)
    max_rounds_per_gpu: int | str = _key(1, min=1, auto=True)
    round_memory_mib: int = _key(6000, min=0)
    poll_interval_s: float = _key(10.0, min=0.001)
    quarantine_after: int = _key(3, min=1)  # rounds failed in a row on one GPU
    nvml_timeout_s: float = _key(10.0, min=0.001)
    sample_interval_s: float = _key(10.0, min=0.001)  # utilisation samples for the report


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
    the cluster this machine belongs to, or "HOST:PORT")."""
    kind: str = _key("local", choices=BACKENDS)
    address: str = "auto"


SECTIONS: dict[str, type] = {
    "backend": BackendSettings,
    "gpu": GpuSettings, "retry": RetrySettings, "timeouts": TimeoutSettings,
    "cleanup": CleanupSettings, "disk": DiskSettings, "logs": LogSettings,
}


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
    object_code_source: str = "object_code_list"
    overrides: tuple[str, ...] = ()  # the command line's overrides, for hints to repeat

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


def _gpus(r: Reader) -> str | tuple[int, ...]:
    value = r.raw("gpus", "all")
    if value == "all":
        return "all"
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        and len(set(value)) == len(value)
    ):
        return tuple(value)
    raise r.error("gpus", value, '"all" or a list of distinct GPU indices >= 0')


def _command(r: Reader) -> tuple[str, ...]:
    command = r.raw("command")
    if not isinstance(command, list) or not command or not all(
        isinstance(part, str) for part in command
    ):
        raise r.error("command", command, "a non-empty list of strings")
    used: set[str] = set()
    for part in command:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(part) if f is not None]
        except ValueError as exc:
            raise r.error("command", part, f"a valid template ({exc})") from None
        for name in fields:
            if name not in PLACEHOLDERS:
                raise r.error("command", part,
                              f"placeholders among {{{'}, {'.join(sorted(PLACEHOLDERS))}}}")
            used.add(name)
    for name in REQUIRED_PLACEHOLDERS:
        if name not in used:
            raise r.error("command", command, f"a template containing {{{name}}}")
    return tuple(command)


def _main(r: Reader, base: Path) -> MainSettings:
    m = r.table_of("main")
    command = _command(m)
    cwd = resolve(base, m.text("cwd", "."))
    if not cwd.is_dir():
        raise m.error("cwd", str(cwd), "an existing folder (main.py's BimanGrasp-Optimization/)")
    env = m.raw("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise m.error("env", env, "a table of string values")
    output_dir = resolve(cwd, m.text("output_dir", "../data/experiments"))
    threads = m.integer("threads", 2)
    m.finish(("command", "cwd", "env", "output_dir", "threads"))
    return MainSettings(command, cwd, env, output_dir, threads)


def _sections(r: Reader) -> dict[str, Any]:
    sections = {name: read_settings(r.table_of(name), cls) for name, cls in SECTIONS.items()}
    t = r.table_of("filter")
    known = tuple(f"max_{k}" for k in FILTER_KEYS)
    sections["filter"] = {k[4:]: t.number(k, None, minimum=float("-inf"))
                          for k in known if t.has(k)}
    t.finish(known)
    table = r.raw("dedup", {})
    if not isinstance(table, dict):
        raise r.error("dedup", table, "a table")
    sections["dedup"] = DedupSettings.from_table(table, r.source)
    return sections


DEFAULTS = {f.name: f.default for f in fields(Config) if f.default is not MISSING}
TOP_KEYS = (
    "exp_name", "experiments_dir", "object_code_list", "object_code_file",
    "target_count_per_object", "round_batch_size", "num_iterations", "seed_base",
    "max_rounds", "merge_stride", "resume", "keep_intermediate", "gpus",
    "main", "gpu", "retry", "timeouts", "filter", "dedup", "cleanup", "disk", "logs",
    "backend",
)


def parse_config(data: Mapping[str, Any], path: Path, source: str | None = None) -> Config:
    """Validate a parsed TOML document; relative paths resolve against ``path``'s folder."""
    source = source or str(path)
    base = path.parent
    r = Reader(source, data)
    exp_name = check_name(source, "exp_name", r.text("exp_name", None))
    if "__" in exp_name or exp_name.endswith("_"):
        # Round folders are {exp_name}__{object_code}__r{id}, side by side with other
        # experiments' in main.py's output folder: the first "__" must end exp_name.
        raise ConfigError(source, "exp_name", exp_name,
                          "a name without '__' and not ending in '_' (round names use '__')")
    codes, code_source = object_codes(r, base)
    check_lengths(source, exp_name, codes, code_source)
    config = Config(
        path=path,
        exp_name=exp_name,
        experiments_dir=resolve(base, r.text("experiments_dir", "experiments")),
        object_codes=codes,
        object_code_source=code_source,
        target_count_per_object=r.integer("target_count_per_object", None),
        round_batch_size=r.integer("round_batch_size", DEFAULTS["round_batch_size"]),
        num_iterations=r.integer("num_iterations", DEFAULTS["num_iterations"], minimum=0),
        seed_base=r.integer("seed_base", DEFAULTS["seed_base"], minimum=0),
        max_rounds=r.integer("max_rounds", DEFAULTS["max_rounds"], maximum=SEED_STRIDE),
        merge_stride=r.integer("merge_stride", DEFAULTS["merge_stride"], auto=True),
        resume=r.flag("resume", DEFAULTS["resume"]),
        keep_intermediate=r.flag("keep_intermediate", DEFAULTS["keep_intermediate"]),
        gpus=_gpus(r),
        main=_main(r, base),
        **_sections(r),
    )
    r.finish(TOP_KEYS)
    if config.backend.kind == "ray" and config.gpus != "all":
        raise ConfigError(source, "gpus", list(config.gpus),
                          '"all" with [backend] kind = "ray" (a node offers the GPUs its '
                          "`ray start --num-gpus N` gave Ray; CUDA_VISIBLE_DEVICES there "
                          "chooses which)")
    top_seed = config.seed_base + len(codes) * SEED_STRIDE
    if top_seed > MAX_SEED:
        raise ConfigError(source, "seed_base", config.seed_base,
                          f"an integer with seed_base + objects x {SEED_STRIDE} <= {MAX_SEED} "
                          f"(main.py seeds numpy, which takes seeds below 2**32)")
    return config


def load_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), "(file)", str(path), "an existing TOML config file")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(str(path), "(file)", str(path),
                          f"valid TOML ({str(exc).splitlines()[0]})") from None


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read, merge command-line overrides (already typed), validate."""
    data = load_toml(path)
    source = str(path)
    if overrides:
        data = {**data, **overrides}
        if "object_code_list" in overrides:
            data.pop("object_code_file", None)
        if "object_code_file" in overrides:
            data.pop("object_code_list", None)
        source = f"{path} (with command-line overrides)"
    config = parse_config(data, path.resolve(), source)
    return replace(config, overrides=_as_args(overrides or {}))


def _as_args(overrides: Mapping[str, Any]) -> tuple[str, ...]:
    args: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no-{key}")
        elif isinstance(value, (list, tuple)):
            args += [f"--{key}", ",".join(str(v) for v in value)]
        else:
            args += [f"--{key}", str(value)]
    return tuple(args)
