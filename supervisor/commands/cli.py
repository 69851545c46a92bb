"""The command line: ``python -m supervisor CONFIG.toml [overrides]``.

The only place that maps errors to exit codes: 2 for bad config or a refused start,
1 when an object failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from supervisor import logs
from supervisor.commands.args import Parser, UsageError, add_overrides, overrides_from
from supervisor.config.load import load_config
from supervisor.config.toml import ConfigError, one_line
from supervisor.gpus.probe import GpuError
from supervisor.run.resume import RefusedError
from supervisor.run.start import run_supervisor
from supervisor.storage import paths
from supervisor.storage.lock import LockedError

EXIT_USAGE = 2
COMMANDS = ("status", "export", "recover", "report", "dataset-info", "show", "validate")


def run_parser() -> Parser:
    p = Parser(prog="python -m supervisor", description=(
        "Run BimanGrasp's main.py in rounds on a GPU pool until every object's quota is met. "
        "Other commands: status, export, recover, report, dataset-info, show, validate "
        "(python -m "
        "supervisor "
        "COMMAND --help)."))
    p.add_argument("config", type=Path, help="the TOML config file")
    p.add_argument("--log-format", choices=logs.FORMATS, default="auto",
                   help="json lines or console (default: json unless stdout is a terminal)")
    p.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="live view of GPUs and progress on stderr (default: on when stderr "
                   "is a terminal)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and the GPUs, start nothing, write nothing")
    add_overrides(p)
    return p


def _parser(command: str) -> argparse.ArgumentParser:
    p = Parser(prog=f"python -m supervisor {command}",
               description="Give the same config overrides as the run (--exp_name ...).")
    p.add_argument("config", type=Path, help="the experiment's TOML config file")
    add_overrides(p)
    if command == "status":
        p.add_argument("--json", action="store_true", help="print one JSON document")
    if command == "export":
        p.add_argument("--out", type=Path, required=True, help="folder for {object_code}.npy")
        p.add_argument("--format", choices=("legacy",), default="legacy",
                       help="legacy: main.py's own result format")
        p.add_argument("--include-unlisted", action="store_true",
                       help="also export objects of earlier runs that the config no "
                       "longer lists")
    return p


def command_main(command: str, argv: Sequence[str]) -> int:
    if command == "report":
        from supervisor.commands.report import page as report
        return report.main(list(argv))
    if command == "show":
        from supervisor.commands import show
        return show.main(list(argv))
    if command == "dataset-info":
        from supervisor.commands import dataset_info
        return dataset_info.main(list(argv))
    if command == "validate":
        from supervisor.commands import validate
        return validate.main(list(argv))
    args = _parser(command).parse_args(argv)
    # status and export only read: they need no checkout ([main] cwd may be gone).
    config = load_config(args.config, overrides_from(args), reading=command != "recover")
    if command == "recover":
        from supervisor.storage.lock import ExperimentLock
        from supervisor.commands.recover import check_experiment, recover

        check_experiment(config)  # before the lock, which would create the folder
        with ExperimentLock(config.exp_dir):
            for line in recover(config):
                print(line)
        return 0
    from supervisor.run.resume import open_state

    path = paths.manifest(config.exp_dir)
    if not path.exists():
        raise RefusedError(f"{path}: no manifest; experiment {config.exp_name!r} has not "
                           f"started (run: {config.command()})")
    state = open_state(config)
    if command == "status":
        from supervisor.commands.status import render, summarize

        summary = summarize(config, state)
        print(json.dumps(summary, indent=1) if args.json else render(summary))
        return 0
    from supervisor.dataset.export import export

    problems = 0
    for line, ok in export(config, state, args.out, args.include_unlisted):
        print(line, file=sys.stdout if ok else sys.stderr)
        problems += not ok
    return 1 if problems else 0


def _run(argv: Sequence[str]) -> int:
    args = run_parser().parse_args(argv)
    logs.configure(args.log_format)
    config = load_config(args.config, overrides_from(args))
    if args.dry_run:
        from supervisor.commands.dryrun import dry_run
        return dry_run(config)
    live = sys.stderr.isatty() if args.live is None else args.live
    return run_supervisor(config, live_stream=sys.stderr if live else None)


def _silence_console() -> None:
    """stdout and stderr are gone (``| head`` closed, the terminal hung up): point them at
    /dev/null, so that no later write, nor Python's own flush at exit, fails."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError):
            pass


def main_guarded() -> int:
    """``main`` for ``python -m supervisor``: a reader that went away (``| head``, a
    terminal that hung up) costs the output, never the exit code of a run."""
    try:
        code = main()
    except OSError as exc:
        # BrokenPipeError (``| head``) or EIO (a hung-up terminal) while printing.
        if not isinstance(exc, BrokenPipeError) and exc.errno != errno.EIO:
            raise
        _silence_console()
        return 1
    except KeyboardInterrupt:  # Ctrl+C before the run's own signal handling started
        return 130
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        _silence_console()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in COMMANDS:
            return command_main(argv[0], argv[1:])
        if len(argv) > 1 and not argv[0].startswith("-") and not argv[1].startswith("-") \
                and not Path(argv[0]).exists():  # `supervisor stats config.toml`
            raise UsageError(f"{argv[0]!r} is not a command ({', '.join(COMMANDS)}) nor a "
                             f"config file; the run is `python -m supervisor CONFIG`")
        return _run(argv)
    except (UsageError, ConfigError, GpuError, RefusedError, LockedError) as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # the reader went away: main_guarded handles it
    except OSError as exc:  # at start-up: a folder that cannot be created, a full disk
        print(f"error: cannot start: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
