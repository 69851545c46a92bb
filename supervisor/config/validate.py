"""Reading ``[validate]``: the built-in validator (``kind = "mujoco"``) with its protocol's
parameters, or the lab's own ``command``; errors name ``validate.<key>``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from supervisor.config.objects import resolve
from supervisor.config.schema import ValidateSettings
from supervisor.config.toml import Reader, read_defaults, template_fields

VALIDATORS = ("mujoco",)
# a [validate] command's placeholders ({python} as in [main])
VALIDATE_PLACEHOLDERS = frozenset({"results", "object_code", "out", "python", "seed", "name"})

REQUIRED = ("results", "out")


def _command(v: Reader) -> tuple[str, ...]:
    command = v.raw("command")
    if not isinstance(command, list) or not command or not all(
            isinstance(part, str) and part for part in command):
        raise v.error("command", command, "a non-empty list of strings (the validator's argv)")
    used: set[str] = set()
    for part in command:
        for name in template_fields(v, "command", part):
            if name not in VALIDATE_PLACEHOLDERS:
                raise v.error("command", part, "placeholders among {"
                              + "}, {".join(sorted(VALIDATE_PLACEHOLDERS)) + "}")
            used.add(name)
    missing = [n for n in REQUIRED if n not in used]
    if missing:
        raise v.error("command", command, "a command with {" + "} and {".join(missing)
                      + "} (the round's result file and the .npz it writes)")
    return tuple(command)


def executable(program: str, cwd: Path) -> str | None:
    """``program`` (the command's first item, {python} as this Python) as it would run
    in ``cwd``, or None when it is not an executable file."""
    program = program.replace("{python}", sys.executable)
    if os.sep in program:
        path = Path(program) if Path(program).is_absolute() else cwd / program
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program)


def read_validate(r: Reader, base: Path, main_cwd: Path, reading: bool) -> ValidateSettings:
    v = r.table_of("validate")
    given = sorted(v.table)
    kind = v.text("kind", None, VALIDATORS) if v.has("kind") else None
    command = _command(v) if v.has("command") else ()
    if kind and command:
        raise v.error("command", list(command), f'no command with kind = "{kind}": one '
                      "validator, the built-in (kind) or your own (command)")
    cwd = resolve(base, v.text("cwd", "")) if v.has("cwd") else None
    env = v.raw("env", {})
    if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(x, str) for k, x in env.items()):
        raise v.error("env", env, "a table of string values")
    values = read_defaults(v, ValidateSettings, skip=("kind", "command", "cwd", "env"))
    v.finish(("kind", "command", "cwd", "env", *values))
    settings = ValidateSettings(kind=kind, command=command, cwd=cwd, env=env, **values)
    if given and not settings.enabled:
        raise v.error("kind", None, '"mujoco" (the built-in validator), or a command: '
                      f"[validate] sets {', '.join(given)} but names no validator")
    if reading or not command:
        return settings
    folder = cwd or main_cwd
    if not folder.is_dir():
        raise v.error("cwd", str(folder), "an existing folder (where the validator runs)")
    if executable(command[0], folder) is None:
        raise v.error("command", command[0], "an executable (a path, or a program on PATH; "
                      "{python} is this Python)")
    return settings
