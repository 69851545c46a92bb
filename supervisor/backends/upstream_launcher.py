"""Run the public BimanGrasp main.py for exactly one object, without modifying it.

    python /path/to/upstream_launcher.py --object_code X [--main PATH] [main.py's flags]

Run it with BimanGrasp's own Python (torch and all), in main.py's folder
(``BimanGrasp-Optimization/``). Upstream main.py cannot pick an object from its command
line: ``--object_code_list`` is declared ``type=list``, so ``Curver`` becomes
``['C', 'u', 'r', 'v', 'e', 'r']``. This launcher runs main.py as ``__main__`` (runpy, as
``python main.py`` would: same ``sys.argv[0]``, ``sys.path[0]`` and ``__file__``) and,
while it runs, sets ``object_code_list = ['X']`` on whatever namespace an argparse parser
that declares ``--object_code_list`` returns. Everything else passes through untouched:
main.py's other flags, its output, its tracebacks and its exit status.

Standard library only, Python 3.8 and later: it runs under BimanGrasp's interpreter, not
the supervisor's. The supervisor's command templates give its path as
``{upstream_launcher}``.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

LAUNCHER_PATH = Path(__file__).resolve()
USAGE = ("usage: upstream_launcher.py --object_code CODE [--main PATH] "
         "[main.py's own flags ...]")
TARGET_DEST = "object_code_list"
EXIT_USAGE = 2  # argparse's code for a bad command line, as main.py itself uses


class UsageError(Exception):
    pass


def split_argv(argv: list[str]) -> tuple[str, str, list[str]]:
    """(object code, main.py path, main.py's own arguments) from the launcher's argv."""
    code, main, rest = None, "main.py", []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, inline = arg.partition("=")
        if name in ("--object_code", "--main"):
            if eq:
                value = inline
            elif i + 1 < len(argv):
                i += 1
                value = argv[i]
            else:
                raise UsageError(f"{name} needs a value")
            if name == "--main":
                main = value
            elif code is not None:
                raise UsageError("--object_code given twice")
            else:
                code = value
        elif arg == "--":
            rest.extend(argv[i:])
            break
        else:
            if name.startswith("--object_code"):
                raise UsageError(f"{name} conflicts with --object_code (one object a run)")
            rest.append(arg)
        i += 1
    if code is None:
        raise UsageError("--object_code CODE is required (the one object this run makes)")
    if not code or code.startswith("-") or "/" in code or code != code.strip():
        raise UsageError(f"--object_code {code!r} is not an object code")
    return code, main, rest


def _overriding(code: str):
    """argparse's parse_known_args, setting ``object_code_list`` where a parser has it."""
    original = argparse.ArgumentParser.parse_known_args

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = original(self, args, namespace)
        if any(action.dest == TARGET_DEST for action in self._actions):
            setattr(parsed, TARGET_DEST, [code])
            parse_known_args.applied = True
        return parsed, extras

    parse_known_args.applied = False
    return original, parse_known_args


def run(code: str, main: Path, args: list[str]) -> None:
    """Run ``main`` as ``__main__`` with ``args``; SystemExit and exceptions propagate."""
    original, patched = _overriding(code)
    sys.argv = [str(main), *args]
    if not getattr(sys.flags, "safe_path", False):
        sys.path[0] = str(main.parent)  # "python main.py" puts the script's folder first
    argparse.ArgumentParser.parse_known_args = patched  # parse_args calls it too
    try:
        runpy.run_path(str(main), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None) or patched.applied:
            raise
    finally:
        argparse.ArgumentParser.parse_known_args = original
    if not patched.applied:
        raise UsageError(f"{main} ran without parsing --{TARGET_DEST}: its objects were not "
                         f"set to [{code!r}]")


def main(argv: list[str] | None = None) -> None:
    try:
        code, path, args = split_argv(sys.argv[1:] if argv is None else argv)
        main_py = Path(path)
        if not main_py.is_file():
            raise UsageError(f"no main.py at {os.path.abspath(path)} (run this in "
                             "BimanGrasp-Optimization/ or pass --main PATH)")
        run(code, main_py.resolve(), args)
    except UsageError as exc:
        sys.stderr.write(f"{USAGE}\nupstream_launcher.py: error: {exc}\n")
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
