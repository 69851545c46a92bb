"""The config: one TOML file, validated completely before anything is written.

Every error names the file, the key, the bad value and the expected form, e.g.
``config.toml: round_batch_size = 0: expected an integer >= 1``.
"""

from __future__ import annotations

import json
import re
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLACEHOLDERS = frozenset(
    {"name", "object_code", "batch_size", "num_iterations", "seed", "gpu", "python"}
)
REQUIRED_PLACEHOLDERS = ("name", "seed")
# Seeds are seed_base + object_index * SEED_STRIDE + round_id: round ids must stay below it.
SEED_STRIDE = 100_000
FILTER_KEYS = ("energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints")
CLEANUP_MODES = ("remove", "light")
PROBES = ("auto", "nvml", "static")
# Config keys whose change would alter grasps already produced: refused on resume.
IDENTITY_KEYS = ("seed_base", "round_batch_size", "num_iterations", "command")
_BAD_NAME = re.compile(r"[/\\\s\x00-\x1f\x7f]")


class ConfigError(ValueError):
    """A config value is unusable; the message is one line naming file, key and fix."""

    def __init__(self, source: str, key: str, value: Any, expected: str) -> None:
        self.source, self.key, self.value, self.expected = source, key, value, expected
        super().__init__(one_line(f"{source}: {key} = {_show(value)}: expected {expected}"))


def one_line(message: str) -> str:
    """Escape control characters, so that a hostile value cannot break the line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class MainSettings:
    command: tuple[str, ...]
    cwd: Path
    env: Mapping[str, str]
    output_dir: Path  # where main.py puts {name}/: cwd / "../data/experiments"
    threads: int = 2


@dataclass(frozen=True)
class GpuSettings:
    probe: str = "auto"
    min_free_mib: int = 8000
    max_rounds_per_gpu: int = 1
    round_memory_mib: int = 6000
    poll_interval_s: float = 10.0


@dataclass(frozen=True)
class RetrySettings:
    max_attempts: int = 3
    max_consecutive_failed_rounds: int = 5


@dataclass(frozen=True)
class TimeoutSettings:
    round_timeout_s: float = 0.0  # 0: no limit on a round's total time
    stall_timeout_s: float = 1800.0  # 0: no limit on time without output
    grace_s: float = 30.0


@dataclass(frozen=True)
class CleanupSettings:
    mode: str = "remove"


@dataclass(frozen=True)
class DiskSettings:
    min_free_gib: float = 5.0  # 0: no check


@dataclass(frozen=True)
class LogSettings:
    progress_interval_s: float = 30.0


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
    merge_stride: int = 1
    resume: bool = True
    keep_intermediate: bool = False
    gpus: str | tuple[int, ...] = "all"
    gpu: GpuSettings = field(default_factory=GpuSettings)
    retry: RetrySettings = field(default_factory=RetrySettings)
    timeouts: TimeoutSettings = field(default_factory=TimeoutSettings)
    filter: Mapping[str, float] = field(default_factory=dict)
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)
    disk: DiskSettings = field(default_factory=DiskSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    object_code_source: str = "object_code_list"

    @property
    def exp_dir(self) -> Path:
        return self.experiments_dir / self.exp_name

    def identity(self) -> dict[str, Any]:
        """What decides a round's grasps; a resumed run must match it."""
        return {
            "seed_base": self.seed_base,
            "round_batch_size": self.round_batch_size,
            "num_iterations": self.num_iterations,
            "command": list(self.main.command),
        }

    def snapshot(self) -> dict[str, Any]:
        """The whole resolved config as JSON data, stored in the manifest to rerun it."""
        return {
            "config_file": str(self.path),
            "exp_name": self.exp_name,
            "experiments_dir": str(self.experiments_dir),
            "object_code_list": list(self.object_codes),
            "target_count_per_object": self.target_count_per_object,
            "round_batch_size": self.round_batch_size,
            "num_iterations": self.num_iterations,
            "seed_base": self.seed_base,
            "max_rounds": self.max_rounds,
            "merge_stride": self.merge_stride,
            "resume": self.resume,
            "keep_intermediate": self.keep_intermediate,
            "gpus": self.gpus if isinstance(self.gpus, str) else list(self.gpus),
            "main": {
                "command": list(self.main.command),
                "cwd": str(self.main.cwd),
                "env": dict(self.main.env),
                "output_dir": str(self.main.output_dir),
                "threads": self.main.threads,
            },
            "gpu": vars(self.gpu).copy(),
            "retry": vars(self.retry).copy(),
            "timeouts": vars(self.timeouts).copy(),
            "filter": dict(self.filter),
            "cleanup": vars(self.cleanup).copy(),
            "disk": vars(self.disk).copy(),
            "logs": vars(self.logs).copy(),
        }


class _Reader:
    """Pops typed values out of one TOML table; complains about what is left."""

    def __init__(self, source: str, table: Mapping[str, Any], prefix: str = "") -> None:
        self.source, self.table, self.prefix = source, dict(table), prefix

    def error(self, key: str, value: Any, expected: str) -> ConfigError:
        return ConfigError(self.source, self.prefix + key, value, expected)

    def has(self, key: str) -> bool:
        return key in self.table

    def raw(self, key: str, default: Any = None) -> Any:
        return self.table.pop(key, default)

    def integer(self, key: str, default: int | None, minimum: int | None = 1,
            maximum: int | None = None) -> int:
        value = self.table.pop(key, default)
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (minimum is None or value >= minimum)
        ok = ok and (maximum is None or value <= maximum)
        if not ok:
            bounds = f" >= {minimum}" if minimum is not None else ""
            bounds += f" and <= {maximum}" if maximum is not None else ""
            raise self.error(key, value, f"an integer{bounds}")
        return value

    def number(self, key: str, default: float | None, minimum: float = 0.0) -> float:
        value = self.table.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            value >= minimum and value != float("inf")
        ):
            raise self.error(key, value, f"a finite number >= {minimum:g}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self.table.pop(key, default)
        if not isinstance(value, bool):
            raise self.error(key, value, "true or false")
        return value

    def text(self, key: str, default: str | None, choices: tuple[str, ...] = ()) -> str:
        value = self.table.pop(key, default)
        if not isinstance(value, str) or not value or (choices and value not in choices):
            expected = " or ".join(map(repr, choices)) if choices else "a non-empty string"
            raise self.error(key, value, expected)
        return value

    def table_of(self, key: str) -> _Reader:
        value = self.table.pop(key, {})
        if not isinstance(value, dict):
            raise self.error(key, value, "a table")
        return _Reader(self.source, value, f"{self.prefix}{key}.")

    def finish(self, known: tuple[str, ...] = ()) -> None:
        for key, value in self.table.items():
            hint = f"one of {', '.join(sorted(known))}" if known else "no such key"
            raise self.error(key, value, f"a known key ({hint})")


def check_name(source: str, key: str, value: Any) -> str:
    """Names become folder names and argv items: no separators, no traversal, no blanks."""
    if (
        not isinstance(value, str)
        or not value
        or _BAD_NAME.search(value)
        or ".." in value
        or value[0] in ".-"
    ):
        raise ConfigError(
            source, key, value,
            "a name without '/', '\\', '..', whitespace or control characters, "
            "not starting with '.' or '-'",
        )
    return value


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def read_object_file(source: str, path: Path) -> list[Any]:
    key = "object_code_file"
    if not path.is_file():
        raise ConfigError(source, key, str(path), "an existing .txt or .json file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, key, str(path), f"a readable UTF-8 file ({exc})") from None
    if path.suffix == ".json":
        try:
            codes = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(source, key, str(path), f"a JSON list of strings ({exc})") from None
        if not isinstance(codes, list):
            raise ConfigError(source, key, str(path), "a JSON list of strings")
        return codes
    if path.suffix != ".txt":
        raise ConfigError(source, key, str(path), "a .txt (one code a line) or .json file")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def _object_codes(r: _Reader, base: Path) -> tuple[tuple[str, ...], str]:
    if r.has("object_code_list") == r.has("object_code_file"):
        raise r.error("object_code_list", r.raw("object_code_list"),
                      "exactly one of object_code_list or object_code_file")
    if r.has("object_code_list"):
        key, codes = "object_code_list", r.raw("object_code_list")
        if not isinstance(codes, list):
            raise r.error(key, codes, "a list of object codes")
    else:
        key = "object_code_file"
        codes = read_object_file(r.source, _resolve(base, r.text(key, None)))
    if not codes:
        raise r.error(key, codes, "at least one object code")
    seen: set[str] = set()
    for code in codes:
        check_name(r.source, key, code)
        if code in seen:
            raise r.error(key, code, "each object code once (this one is duplicated)")
        seen.add(code)
    return tuple(codes), key


def _gpus(r: _Reader) -> str | tuple[int, ...]:
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


def _command(r: _Reader) -> tuple[str, ...]:
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


def _main(r: _Reader, base: Path) -> MainSettings:
    m = r.table_of("main")
    command = _command(m)
    cwd = _resolve(base, m.text("cwd", "."))
    if not cwd.is_dir():
        raise m.error("cwd", str(cwd), "an existing folder (main.py's BimanGrasp-Optimization/)")
    env = m.raw("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise m.error("env", env, "a table of string values")
    output_dir = _resolve(cwd, m.text("output_dir", "../data/experiments"))
    threads = m.integer("threads", 2)
    m.finish(("command", "cwd", "env", "output_dir", "threads"))
    return MainSettings(command, cwd, env, output_dir, threads)


def _sections(r: _Reader) -> dict[str, Any]:
    g = r.table_of("gpu")
    gpu = GpuSettings(
        probe=g.text("probe", "auto", PROBES),
        min_free_mib=g.integer("min_free_mib", 8000, minimum=0),
        max_rounds_per_gpu=g.integer("max_rounds_per_gpu", 1),
        round_memory_mib=g.integer("round_memory_mib", 6000, minimum=0),
        poll_interval_s=g.number("poll_interval_s", 10.0, minimum=0.001),
    )
    g.finish(tuple(vars(GpuSettings())))
    t = r.table_of("retry")
    retry = RetrySettings(t.integer("max_attempts", 3),
                          t.integer("max_consecutive_failed_rounds", 5))
    t.finish(tuple(vars(RetrySettings())))
    t = r.table_of("timeouts")
    timeouts = TimeoutSettings(
        t.number("round_timeout_s", 0.0), t.number("stall_timeout_s", 1800.0),
        t.number("grace_s", 30.0),
    )
    t.finish(tuple(vars(TimeoutSettings())))
    t = r.table_of("filter")
    known = tuple(f"max_{k}" for k in FILTER_KEYS)
    thresholds = {k[4:]: t.number(k, None, minimum=float("-inf")) for k in known if t.has(k)}
    t.finish(known)
    t = r.table_of("cleanup")
    cleanup = CleanupSettings(t.text("mode", "remove", CLEANUP_MODES))
    t.finish(("mode",))
    t = r.table_of("disk")
    disk = DiskSettings(t.number("min_free_gib", 5.0))
    t.finish(("min_free_gib",))
    t = r.table_of("logs")
    logs = LogSettings(t.number("progress_interval_s", 30.0))
    t.finish(("progress_interval_s",))
    return dict(gpu=gpu, retry=retry, timeouts=timeouts, filter=thresholds,
                cleanup=cleanup, disk=disk, logs=logs)


TOP_KEYS = (
    "exp_name", "experiments_dir", "object_code_list", "object_code_file",
    "target_count_per_object", "round_batch_size", "num_iterations", "seed_base",
    "max_rounds", "merge_stride", "resume", "keep_intermediate", "gpus",
    "main", "gpu", "retry", "timeouts", "filter", "cleanup", "disk", "logs",
)


def parse_config(data: Mapping[str, Any], path: Path, source: str | None = None) -> Config:
    """Validate a parsed TOML document; relative paths resolve against ``path``'s folder."""
    source = source or str(path)
    base = path.parent
    r = _Reader(source, data)
    exp_name = check_name(source, "exp_name", r.text("exp_name", None))
    if "__" in exp_name or exp_name.endswith("_"):
        # Round folders are {exp_name}__{object_code}__r{id}, side by side with other
        # experiments' in main.py's output folder: the first "__" must end exp_name.
        raise ConfigError(source, "exp_name", exp_name,
                          "a name without '__' and not ending in '_' (round names use '__')")
    codes, code_source = _object_codes(r, base)
    config = Config(
        path=path,
        exp_name=exp_name,
        experiments_dir=_resolve(base, r.text("experiments_dir", "experiments")),
        object_codes=codes,
        object_code_source=code_source,
        target_count_per_object=r.integer("target_count_per_object", None),
        round_batch_size=r.integer("round_batch_size", 512),
        num_iterations=r.integer("num_iterations", 10000, minimum=0),
        seed_base=r.integer("seed_base", 0, minimum=0),
        max_rounds=r.integer("max_rounds", 1000, maximum=SEED_STRIDE),
        merge_stride=r.integer("merge_stride", 1),
        resume=r.flag("resume", True),
        keep_intermediate=r.flag("keep_intermediate", False),
        gpus=_gpus(r),
        main=_main(r, base),
        **_sections(r),
    )
    r.finish(TOP_KEYS)
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
    return parse_config(data, path.resolve(), source)
