"""The command-line pieces every command shares: the parser that fails with one line
and exit code 2, and the config overrides (``--exp_name X --gpus 0,1 ...``, the same
names as the config's top-level keys)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse that fails with one line and exit code 2, never a usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


CODES_FORMS = "a,b,c or a TOML list such as '[\"a\", \"b\"]'"
GPUS_FORMS = "all, 0,1,2 or a TOML list such as '[0, 1]'"


def _toml_list(text: str, forms: str) -> list[Any]:
    """``[...]`` as TOML reads it (the config key's own syntax)."""
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expected {forms}, got {text!r}")
    return value


def _codes(text: str) -> list[str]:
    text = text.strip()
    if text.startswith("["):
        codes = _toml_list(text, CODES_FORMS)
        if not all(isinstance(c, str) for c in codes):
            raise argparse.ArgumentTypeError(f"expected {CODES_FORMS}, got {text!r}")
        return codes
    codes = [c.strip() for c in text.removesuffix(",").split(",")]
    if not all(codes) or any(ch in text for ch in "[]{}\"'"):
        raise argparse.ArgumentTypeError(f"expected {CODES_FORMS}, got {text!r}")
    return codes


def _gpus(text: str) -> str | list[int]:
    text = text.strip()
    if text == "all":
        return "all"
    try:
        gpus = _toml_list(text, GPUS_FORMS) if text.startswith("[") else [
            int(g) for g in text.split(",")]
    except ValueError:
        gpus = None
    if not gpus or not all(isinstance(g, int) and not isinstance(g, bool) for g in gpus):
        raise argparse.ArgumentTypeError(f"expected {GPUS_FORMS}, got {text!r}")
    return gpus


def _stride(text: str) -> int | str:
    return "auto" if text == "auto" else int(text)


def _abs_path(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return str(Path(text).expanduser().resolve())


OVERRIDES: dict[str, Any] = {
    "exp_name": str, "experiments_dir": _abs_path, "object_code_list": _codes,
    "object_code_file": _abs_path, "target_count_per_object": int, "round_batch_size": int,
    "num_iterations": int, "seed_base": int, "max_rounds": int, "merge_stride": _stride,
    "gpus": _gpus,
}
HELP = {"object_code_list": f"the objects: {CODES_FORMS}", "gpus": GPUS_FORMS,
        "merge_stride": 'an integer or "auto"'}
BOOL_OVERRIDES = ("resume", "keep_intermediate")


def add_overrides(p: argparse.ArgumentParser) -> None:
    seeds = p.add_argument_group("config overrides (same names as the config keys)")
    for key, kind in OVERRIDES.items():
        seeds.add_argument(f"--{key}", type=kind, default=None, metavar=key.upper(),
                           help=HELP.get(key))
    for key in BOOL_OVERRIDES:
        seeds.add_argument(f"--{key}", action=argparse.BooleanOptionalAction, default=None)


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    keys = (*OVERRIDES, *BOOL_OVERRIDES)  # --live and --dry-run are not config keys
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
