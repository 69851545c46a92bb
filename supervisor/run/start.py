"""Starting a run: lock the experiment, open or resume its state, build the Supervisor
around the GPU pool and the backend, and run it to the end (``run_supervisor``, which
joins a Ray cluster first when the config says so). Raises the errors that mean a
refused start; nothing is written before the checks pass."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, TextIO

import anyio

from supervisor import logs
from supervisor.config.schema import Config
from supervisor.core.records import TO_RUN, RoundStatus
from supervisor.core.state import CleanRounds
from supervisor.gpus.pool import GpuPool
from supervisor.gpus.probe import Probe
from supervisor.gpus.choose import make_probe
from supervisor.run.resume import RefusedError, load_grasps, open_experiment, start
from supervisor.run.supervisor import Supervisor
from supervisor.storage import paths
from supervisor.storage.lock import ExperimentLock, in_use, live_holder


def check_validator(config: Config) -> None:
    """``[validate] kind = "mujoco"``: the checkout holds what the built-in validator reads
    (both hands' MJCFs, each object's CoACD parts), or the start is refused (exit 2) before
    a round runs whose grasps could never be validated. MuJoCo is imported only then."""
    if config.validate.kind != "mujoco":
        return
    from supervisor.validate.builtin import check_setup
    problem = check_setup(config.main.cwd, config.object_codes)
    if problem is not None:
        raise RefusedError(f'{config.path}: [validate] kind = "mujoco": {problem}')


def prepare(config: Config, probe: Probe | None = None,
            backend: Any = None) -> tuple[GpuPool, str | None]:
    check_validator(config)
    warning = None
    if backend is not None:  # a cluster's GPUs, as the backend found them
        return GpuPool(backend, "all", config.gpu), None
    if probe is None:
        probe, warning = make_probe(config.gpu.probe, config.gpus, config.main.env,
                                    config.main.cwd)
    return GpuPool(probe, config.gpus, config.gpu), warning


@contextlib.contextmanager
def open_supervisor(config: Config, probe: Probe | None = None, handle_signals: bool = True,
                    live_stream: TextIO | None = None,
                    backend: Any = None) -> Iterator[Supervisor]:
    """Lock the experiment, open or resume its state, and build the Supervisor.
    ``backend``: an open ``backends.ray.backend.RayBackend``; None runs rounds on this machine.

    Raises the errors that mean exit code 2; nothing is written before the checks pass.
    """
    pool, warning = prepare(config, probe, backend)
    with ExperimentLock(config.exp_dir):
        state = open_experiment(config)
        running = {r.name: r.job_id for o in state.objects.values() for r in o.rounds.values()
                   if r.status == RoundStatus.RUNNING}  # before start() interrupts them
        store, effects, orphans = start(config, state, pool.gpus)
        if backend is not None and backend.kind == "slurm":
            _resume_slurm(backend, store.state, running)
        # What rounds were seen to take (a run before's too): the pool's estimate.
        seen = [r.footprint_mib for r in store.state.gpus.values() if r.footprint_mib]
        pool.footprint_mib = max(seen) if seen else None
        accs, reloaded, leftovers = load_grasps(config, store)
        log = logs.get_logger()
        for name, pid in orphans:
            log.warning("orphan_stopped", round=name, pgid=pid)
        if warning:
            log.warning("gpu_probe", message=warning)
        if backend is not None and backend.kind == "ray":
            log.info("ray_cluster", address=config.backend.address, gpus=len(pool.gpus),
                     nodes={node: len(keys) for node, keys in backend.nodes().items()})
        if backend is not None and backend.kind == "slurm":
            s = config.backend
            log.info("slurm_cluster", mode=backend.mode, places=len(pool.gpus),
                     allocation=backend.allocation, partition=s.partition or None,
                     time_limit=s.time_limit or None, gres=s.gres, test_only=backend.test_only
                     or None)
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


def _resume_slurm(backend: Any, state: Any, running: dict[str, str | None]) -> None:
    """Jobs an earlier supervisor left in Slurm's queue: adopt those of rounds to run
    again, cancel the rest (backends.slurm.adopt)."""
    from supervisor.backends.slurm.connect import resume
    to_run = {r.name for code in state.active for r in state.objects[code].rounds.values()
              if r.status in TO_RUN}
    resume(backend, running, to_run)


def run_supervisor(config: Config, probe: Probe | None = None,
                   live_stream: TextIO | None = None, backend: Any = None) -> int:
    """Run to the end. With ``[backend] kind = "ray"`` and no ``backend`` given, joins the
    cluster first (Ray is imported only then) and leaves it at the end; with ``"slurm"``,
    checks Slurm first and cancels what is left of the experiment's jobs at the end."""
    own = backend is None and probe is None and config.backend.kind in ("ray", "slurm")
    if own:  # the refusals that need no cluster come first: joining one takes seconds
        holder = live_holder(config.exp_dir)
        if holder is not None:
            raise in_use(paths.lock(config.exp_dir), holder)
        open_experiment(config)  # raises RefusedError (identity, resume = false, ...)
        check_validator(config)
        if config.backend.kind == "ray":
            from supervisor.backends.ray.backend import open_backend
        else:
            from supervisor.backends.slurm.connect import open_backend
        backend = open_backend(config)

    async def main() -> int:
        with open_supervisor(config, probe, live_stream=live_stream, backend=backend) as sup:
            return await sup.run()

    try:
        return anyio.run(main)
    finally:
        if own:
            backend.close()
