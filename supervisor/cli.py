"""The command line: ``python -m supervisor CONFIG.toml [overrides]``.

The only place that maps errors to exit codes: 2 for bad config or a refused start,
1 when an object failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

import anyio

from supervisor import logs, paths
from supervisor.commands import COMMANDS, Parser, UsageError, add_overrides, overrides_from
from supervisor.config import Config, ConfigError, load_config, one_line
from supervisor.gpus import GpuError, GpuPool, Probe, make_probe
from supervisor.lock import ExperimentLock, LockedError, in_use, live_holder
from supervisor.resume import RefusedError, load_grasps, open_experiment, start
from supervisor.state import CleanRounds
from supervisor.supervisor import Supervisor

EXIT_USAGE = 2


def run_parser() -> Parser:
    p = Parser(prog="python -m supervisor", description=(
        "Run BimanGrasp's main.py in rounds on a GPU pool until every object's quota is met. "
        "Other commands: status, export, recover, report, dataset-info (python -m supervisor "
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


def prepare(config: Config, probe: Probe | None = None,
            backend: Any = None) -> tuple[GpuPool, str | None]:
    warning = None
    if backend is not None:  # a cluster's GPUs, as the backend found them
        return GpuPool(backend, "all", config.gpu), None
    if probe is None:
        probe, warning = make_probe(config.gpu.probe, config.gpus)
    return GpuPool(probe, config.gpus, config.gpu), warning


@contextlib.contextmanager
def open_supervisor(config: Config, probe: Probe | None = None, handle_signals: bool = True,
                    live_stream: TextIO | None = None,
                    backend: Any = None) -> Iterator[Supervisor]:
    """Lock the experiment, open or resume its state, and build the Supervisor.
    ``backend``: an open ``raybackend.RayBackend``; None runs rounds on this machine.

    Raises the errors that mean exit code 2; nothing is written before the checks pass.
    """
    pool, warning = prepare(config, probe, backend)
    with ExperimentLock(config.exp_dir):
        state = open_experiment(config)
        store, effects, orphans = start(config, state, pool.gpus)
        accs, reloaded, leftovers = load_grasps(config, store)
        log = logs.get_logger()
        for name, pid in orphans:
            log.warning("orphan_stopped", round=name, pgid=pid)
        if warning:
            log.warning("gpu_probe", message=warning)
        if backend is not None and backend.kind == "ray":
            log.info("ray_cluster", address=config.backend.address, gpus=len(pool.gpus),
                     nodes={node: len(keys) for node, keys in backend.nodes().items()})
        inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
        if inherited and config.gpus == "all" and backend is None:
            # NVML ignores it: on a scheduler's allocation, "all" means other people's GPUs.
            log.warning("gpu_env", cuda_visible_devices=inherited, message=(
                "CUDA_VISIBLE_DEVICES is set for the supervisor, but NVML sees every GPU and "
                "gpus = \"all\" uses them all; list the allocated GPUs' indices in gpus "
                "(PCI bus order) to stay inside an allocation"))
        sup = Supervisor(config, store, accs, pool, handle_signals=handle_signals,
                         live_stream=live_stream, backend=backend)
        sup.merger.carry_out(effects + reloaded)
        for code, names in leftovers:  # a kill cut the cleanup of a done object short
            sup.merger.carry_out([CleanRounds(code, names)])
        for code in list(accs):  # [dedup]: rounds re-read from their folders, in order
            sup.merger.judge(code)
        try:
            yield sup
        finally:
            store.journal.close()


def run_supervisor(config: Config, probe: Probe | None = None,
                   live_stream: TextIO | None = None, backend: Any = None) -> int:
    """Run to the end. With ``[backend] kind = "ray"`` and no ``backend`` given, joins the
    cluster first (Ray is imported only then) and leaves it at the end."""
    own = backend is None and probe is None and config.backend.kind == "ray"
    if own:  # the refusals that need no cluster come first: joining one takes seconds
        holder = live_holder(config.exp_dir)
        if holder is not None:
            raise in_use(paths.lock(config.exp_dir), holder)
        open_experiment(config)  # raises RefusedError (identity, resume = false, ...)
        from supervisor.raybackend import open_backend
        backend = open_backend(config)

    async def main() -> int:
        with open_supervisor(config, probe, live_stream=live_stream, backend=backend) as sup:
            return await sup.run()

    try:
        return anyio.run(main)
    finally:
        if own:
            backend.close()


def _run(argv: Sequence[str]) -> int:
    args = run_parser().parse_args(argv)
    logs.configure(args.log_format)
    config = load_config(args.config, overrides_from(args))
    if args.dry_run:
        from supervisor.dryrun import dry_run
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
            from supervisor import commands
            return commands.main(argv[0], argv[1:])
        return _run(argv)
    except (UsageError, ConfigError, GpuError, RefusedError, LockedError) as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        raise  # the reader went away: main_guarded handles it
    except OSError as exc:  # at start-up: a folder that cannot be created, a full disk
        print(f"error: cannot start: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
