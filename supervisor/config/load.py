"""Reading the config: one TOML file, validated completely before anything is written.

Every error names the file, the key, the bad value and the expected form, e.g.
``config.toml: round_batch_size = 0: expected an integer >= 1``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any, Mapping

from supervisor.config.objects import check_lengths, object_codes, resolve
from supervisor.config.schema import (
    PLACEHOLDERS, REQUIRED_PLACEHOLDERS, SECTIONS, FILTER_KEYS, Config, DedupSettings,
    MainSettings, ViewSettings,
)
from supervisor.config.validate import read_validate
from supervisor.config.toml import (
    ConfigError, Reader, check_name, read_settings, source, template_fields,
)
from supervisor.core.plan import MAX_SEED, SEED_STRIDE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
        for name in template_fields(r, "command", part):
            if name not in PLACEHOLDERS:
                raise r.error("command", part,
                              f"placeholders among {{{'}, {'.join(sorted(PLACEHOLDERS))}}}")
            used.add(name)
    for name in REQUIRED_PLACEHOLDERS:
        if name not in used:
            raise r.error("command", command, f"a template containing {{{name}}}")
    return tuple(command)


def _main(r: Reader, base: Path, reading: bool) -> MainSettings:
    m = r.table_of("main")
    command = _command(m)
    cwd = resolve(base, m.text("cwd", "."))
    if not reading and not cwd.is_dir():
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


def _view(r: Reader, base: Path, reading: bool) -> ViewSettings:
    v = r.table_of("view")
    command = v.raw("command", [])
    if not isinstance(command, list) or not all(isinstance(c, str) and c for c in command):
        raise v.error("command", command, 'a list of strings, e.g. ["conda", "run", "-n", '
                                          '"bimangrasp", "python"] (BimanGrasp\'s Python)')
    cwd = resolve(base, v.text("cwd", "")) if v.has("cwd") else None
    if cwd is not None and not reading and not cwd.is_dir():
        raise v.error("cwd", str(cwd), "an existing folder (the checkout's "
                                       "BimanGrasp-Optimization/)")
    env = v.raw("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in env.items()):
        raise v.error("env", env, "a table of string values")
    settings = ViewSettings(tuple(command), cwd, env,
                            v.number("timeout_s", 300.0, minimum=0.001),
                            v.integer("workers", 0, minimum=0),
                            v.integer("grasps_per_object", 4, minimum=0, maximum=12))
    v.finish(("command", "cwd", "env", "timeout_s", "workers", "grasps_per_object"))
    return settings


def _sections(r: Reader) -> dict[str, Any]:
    sections = {name: read_settings(r.table_of(name), cls) for name, cls in SECTIONS.items()}
    t = r.table_of("filter")
    known = tuple(f"max_{k}" for k in FILTER_KEYS)
    # Any finite threshold; +-inf and nan are refused: leaving the key out is "no
    # threshold", and -inf (or nan, which compares false) would drop every grasp.
    sections["filter"] = {k[4:]: t.number(k, None, minimum=None,
                                          hint=f" (leave {k} out for no threshold)")
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
    "backend", "view", "validate",
)


def parse_config(data: Mapping[str, Any], path: Path, source: str | None = None,
                 reading: bool = False) -> Config:
    """Validate a parsed TOML document; relative paths resolve against ``path``'s folder.
    ``reading``: for a command that only reads the experiment (status, export, report,
    show), which needs no checkout: ``[main] cwd`` and ``[view] cwd`` may be missing (a
    moved checkout, the dataset copied to a laptop)."""
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
    main = _main(r, base, reading)
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
        main=main,
        view=_view(r, base, reading),
        validate=read_validate(r, base, main.cwd, reading),
        **_sections(r),
    )
    r.finish(TOP_KEYS)
    if config.backend.kind == "slurm":
        _check_slurm(config, source)
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


def _check_slurm(config: Config, source: str) -> None:
    """Slurm places each round on the GPU it chooses; sharing a GPU is Slurm's too."""
    if config.gpus != "all":
        raise ConfigError(source, "gpus", list(config.gpus),
                          '"all" with [backend] kind = "slurm" (Slurm chooses the GPU of '
                          "each round; [backend] partition, gres and sbatch_args say which "
                          "kind)")
    if config.gpu.max_rounds_per_gpu != 1:
        raise ConfigError(source, "gpu.max_rounds_per_gpu", config.gpu.max_rounds_per_gpu,
                          '1 with [backend] kind = "slurm" (one round per job; to share a '
                          'GPU, ask Slurm for a share: gres = "shard:1", or MPS)')


def load_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), "(file)", str(path), "an existing TOML config file")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(str(path), "(file)", str(path),
                          f"valid TOML ({str(exc).splitlines()[0]})") from None


def load_config(path: Path, overrides: Mapping[str, Any] | None = None,
                reading: bool = False) -> Config:
    """Read, merge command-line overrides (already typed), validate. ``reading``: see
    ``parse_config`` (a run, ``--dry-run`` and ``recover`` need the checkout)."""
    data = load_toml(path)
    overrides = overrides or {}
    if overrides:
        data = {**data, **overrides}
        if "object_code_list" in overrides:
            data.pop("object_code_file", None)
        if "object_code_file" in overrides:
            data.pop("object_code_list", None)
    try:
        config = parse_config(data, path.resolve(), str(path), reading)
    except ConfigError as exc:
        key = re.split(r"[.\[ ]", exc.key, maxsplit=1)[0]
        if key not in overrides:
            raise
        # The value came from the command line, not the file: say so.
        raise ConfigError(source(path, key, True), exc.key, exc.value, exc.expected) \
            from None
    return replace(config, overrides=_as_args(overrides))


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
