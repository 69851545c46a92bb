"""Reading and checking TOML values: one line per error, naming the file, the key, the
bad value and the expected form, e.g.
``config.toml: round_batch_size = 0: expected an integer >= 1``.
"""

from __future__ import annotations

import json
import math
import re
import string
from dataclasses import fields
from typing import Any, Mapping

_BAD_NAME = re.compile(r"[/\\\s\x00-\x1f\x7f]")


class ConfigError(ValueError):
    """A config value is unusable; the message is one line naming file, key and fix."""

    def __init__(self, source: str, key: str, value: Any, expected: str) -> None:
        self.source, self.key, self.value, self.expected = source, key, value, expected
        super().__init__(one_line(f"{source}: {key} = {_show(value)}: expected {expected}"))


def source(path: object, key: str, on_command_line: bool) -> str:
    """Where a key's value came from, for an error: the file, or the command line."""
    return f"{path}, with --{key} on the command line" if on_command_line else str(path)


def one_line(message: str) -> str:
    """Escape control characters, so that a hostile value cannot break the line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def toml_value(value: Any) -> str:
    """``value`` as a TOML file spells it (true, "text", [1, 2], {a = 1}), so that an
    error shows what the user wrote, not Python's True or 'text'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "(unset)"
    return repr(value)


def _show(value: Any) -> str:
    text = toml_value(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Reader:
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
                maximum: int | None = None, auto: bool = False) -> int:
        value = self.table.pop(key, default)
        if auto and value == "auto":
            return value
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok = ok and (minimum is None or value >= minimum)
        ok = ok and (maximum is None or value <= maximum)
        if not ok:
            bounds = f" >= {minimum}" if minimum is not None else ""
            bounds += f" and <= {maximum}" if maximum is not None else ""
            raise self.error(key, value, f"an integer{bounds}" + (' or "auto"' if auto else ""))
        return value

    def number(self, key: str, default: float | None, minimum: float | None = 0.0,
               hint: str = "") -> float:
        """A finite number (TOML also spells nan and +-inf), at least ``minimum``
        (None: any); ``hint`` ends the error's expected form."""
        value = self.table.pop(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or (minimum is not None and value < minimum):
            bound = "" if minimum is None else f" >= {minimum:g}"
            raise self.error(key, value, f"a finite number{bound}{hint}")
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

    def blank_text(self, key: str, default: str) -> str:
        value = self.table.pop(key, default)
        if not isinstance(value, str):
            raise self.error(key, value, 'a string ("" for none)')
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.table.pop(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(key, value, "a list of non-empty strings")
        return tuple(value)

    def table_of(self, key: str) -> Reader:
        value = self.table.pop(key, {})
        if not isinstance(value, dict):
            raise self.error(key, value, "a table")
        return Reader(self.source, value, f"{self.prefix}{key}.")

    def finish(self, known: tuple[str, ...] = ()) -> None:
        for key, value in self.table.items():
            hint = f"one of {', '.join(sorted(known))}" if known else "no such key"
            raise self.error(key, value, f"a known key ({hint})")


def template_fields(r: Reader, key: str, part: str) -> list[str]:
    """The ``{placeholder}`` names in one argv string of ``key``; a broken template is
    refused naming it."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(part) if f is not None]
    except ValueError as exc:
        raise r.error(key, part, f"a valid template ({exc})") from None


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


def read_settings(r: Reader, cls: type) -> Any:
    """A settings dataclass from its TOML table: defaults, types and bounds come from
    the dataclass fields, and so does the list of known keys."""
    values = read_defaults(r, cls)
    r.finish(tuple(f.name for f in fields(cls)))
    return cls(**values)


def read_defaults(r: Reader, cls: type, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of ``cls``'s fields (but ``skip``) from ``r``, by their rules."""
    values = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        rules, default = f.metadata, f.default
        if rules.get("auto"):
            values[f.name] = r.integer(f.name, default, minimum=rules.get("min"),
                                       maximum=rules.get("max"), auto=True)
        elif "choices" in rules:
            values[f.name] = r.text(f.name, default, rules["choices"])
        elif rules.get("blank"):
            values[f.name] = r.blank_text(f.name, default)
        elif isinstance(default, tuple):
            values[f.name] = r.strings(f.name, default)
        elif isinstance(default, str):
            values[f.name] = r.text(f.name, default)
        elif isinstance(default, bool):
            values[f.name] = r.flag(f.name, default)
        elif isinstance(default, int):
            values[f.name] = r.integer(f.name, default, minimum=rules.get("min"),
                                       maximum=rules.get("max"), auto=rules.get("auto", False))
        else:
            values[f.name] = r.number(f.name, default, minimum=rules.get("min", 0.0))
    return values


