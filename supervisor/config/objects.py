"""The object list of a config: inline or from a .txt/.json file, each code a safe
folder name, once, and short enough for the file names made from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from supervisor.config.toml import ConfigError, Reader, check_name, toml_value

# Round logs are {exp_name}__{code}__r{id}.log: past the file system's name limit every
# round would fail with ENAMETOOLONG.
MAX_NAME_BYTES = 255  # a file name on ext4, xfs, btrfs
LONGEST_ROUND_ID = 99_999


def resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def read_object_file(source: str, path: Path) -> list[tuple[Any, str]]:
    """The file's codes, each with where it is (``line 3``, ``item 2``)."""
    key = "object_code_file"
    if not path.is_file():
        raise ConfigError(source, key, str(path), "an existing .txt or .json file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM is not part of the first code
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, key, str(path), f"a readable UTF-8 file ({exc})") from None
    if path.suffix == ".json":
        try:
            codes = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(source, key, str(path), f"a JSON list of strings ({exc})") from None
        if not isinstance(codes, list):
            raise ConfigError(source, key, str(path), "a JSON list of strings")
        return [(code, f"item {n}") for n, code in enumerate(codes)]
    if path.suffix != ".txt":
        raise ConfigError(source, key, str(path), "a .txt (one code a line) or .json file")
    lines = ((n, line.split("#", 1)[0].strip()) for n, line in enumerate(text.splitlines(), 1))
    return [(line, f"line {n}") for n, line in lines if line]


def object_codes(r: Reader, base: Path) -> tuple[tuple[str, ...], str]:
    if r.has("object_code_list") == r.has("object_code_file"):
        raise r.error("object_code_list", r.raw("object_code_list"),
                      "exactly one of object_code_list or object_code_file")
    if r.has("object_code_list"):
        key, codes = "object_code_list", r.raw("object_code_list")
        if not isinstance(codes, list):
            raise r.error(key, codes, "a list of object codes")
        found = [(code, f"{key}[{n}]") for n, code in enumerate(codes)]
    else:
        key = "object_code_file"
        path = resolve(base, r.text(key, None))
        found = read_object_file(r.source, path)
    if not found:
        raise r.error(key, [], "at least one object code")
    seen: dict[str, str] = {}
    for code, where in found:
        check_name(r.source, where if key == "object_code_list" else f"{key} ({path}, {where})",
                   code)
        if code in seen:
            if key == "object_code_list":
                raise r.error(where, code, f"each object code once (already {seen[code]})")
            raise r.error(key, str(path), f"each object code once ({toml_value(code)} is on "
                                          f"{seen[code]} and {where})")
        seen[code] = where
    return tuple(code for code, _ in found), key


def check_lengths(source: str, exp_name: str, codes: tuple[str, ...], key: str) -> None:
    """Round folders and logs are named {exp_name}__{code}__r{id}(.log): a name past the
    file system's 255 bytes would fail every round with ENAMETOOLONG."""
    for code in codes:
        longest = len(f"{exp_name}__{code}__r{LONGEST_ROUND_ID}.log".encode())
        if longest > MAX_NAME_BYTES:
            raise ConfigError(source, key, code,
                              f"an object code short enough that round log names stay within "
                              f"{MAX_NAME_BYTES} bytes (this one makes {longest} with "
                              f"exp_name {exp_name!r})")


