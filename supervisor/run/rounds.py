"""One round: build its command line, run main.py on one GPU, read its result.

``run_round`` never raises for a round's own failure: every way a round can end becomes an
Outcome that the merger records.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import anyio
from supervisor.storage import paths
from supervisor.run import endings, progress
from supervisor.dataset import results
from supervisor.core import slots
from supervisor.backends.local import LocalBackend
from supervisor.backends.base import RoundError, RoundLost
from supervisor.config.schema import Config
from supervisor.backends.job import RoundJob, command
from supervisor.logs import get_logger

TAIL_LINES = 20
OK, FAILED, INTERRUPTED, OUT_OF_MEMORY = "ok", "failed", "interrupted", "out_of_memory"


@dataclass(frozen=True)
class Started:
    job: RoundJob
    pid: int  # the round's process group leader (supervisor/backends/launch.py)
    proc_start: int | None = None


@dataclass
class Control:
    """How the supervisor stops one round: ``stop`` (SIGTERM, SIGKILL after grace_s),
    ``kill`` (SIGKILL now)."""
    stop: anyio.Event = field(default_factory=anyio.Event)
    kill: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class Outcome:
    job: RoundJob
    kind: str
    started_at: float
    finished_at: float
    exit_code: int | None = None
    reason: str | None = None
    produced: int = 0
    accepted: int = 0
    columns: results.Columns | None = None  # accepted grasps with provenance
    tail: list[str] = field(default_factory=list)
    gpu_mib: int | None = None  # the most GPU memory NVML showed for the round
    # Out of memory: no other round shared its card; the card's free memory after it;
    # what a round is expected to take (set by the dispatcher).
    alone: bool = False
    free_mib: int | None = None
    estimate_mib: int | None = None
    # Called by the merger once the outcome is recorded (frees the GPU slot).
    on_ended: Callable[[Outcome], None] | None = None


class LineSink:
    """Writes a child's lines to its round log and its GPU's log; turns tqdm into events."""

    def __init__(self, config: Config, job: RoundJob) -> None:
        round_log = paths.round_log(config.exp_dir, job.name)
        round_log.parent.mkdir(parents=True, exist_ok=True)
        # Line-buffered, so that `tail -f` shows a round as it runs.
        self.round_log = round_log.open("a", encoding="utf-8", buffering=1)
        self.gpu_log = paths.gpu_log(config.exp_dir, job.gpu).open(
            "a", encoding="utf-8", buffering=1)
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.interval_s = config.logs.progress_interval_s
        self.last_event = -float("inf")
        self.name = job.name
        self.log = get_logger(**job.fields())
        self.latest: progress.Progress | None = None
        self.latest_at = 0.0  # when the latest bar was read (monotonic): the meter's clock
        self.job = job
        self.write("supervisor",
                   f"attempt {job.attempt} on {slots.label(job.gpu)}, seed {job.seed}")

    def write(self, stream: str, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.round_log.write(f"{stamp} {stream}: {line}\n")
        self.gpu_log.write(f"{stamp} {self.name} {stream}: {line}\n")

    def __call__(self, stream: str, line: str) -> None:
        self.write(stream, line)
        bar = progress.parse(line) if stream == "stderr" else None
        if bar is None:
            self.tail.append(line)
            return
        last, self.latest = self.latest, bar
        now = self.latest_at = time.monotonic()
        finished = bar.n == bar.total and (last is None or last.n != last.total)
        if now - self.last_event >= self.interval_s or finished:  # tqdm redraws 100% twice
            self.last_event = now
            self.log.info("round_progress", step=bar.n, total=bar.total,
                          it_per_s=bar.it_per_s, eta_s=bar.eta_s, **self.job.placed())

    def close(self) -> None:
        self.round_log.close()
        self.gpu_log.close()


async def run_round(config: Config, job: RoundJob, control: Control,
                    on_start: Callable[[int], None],
                    watch: dict[str, tuple[RoundJob, LineSink]] | None = None,
                    backend: Any = None) -> Outcome:
    """Run one attempt; ``watch`` lists the rounds running now (for the live view).
    ``backend`` (``supervisor.backends``) runs the child; by default on this machine."""
    watch = {} if watch is None else watch
    try:
        return await _run_round(config, job, control, on_start, watch,
                                backend or LocalBackend())
    finally:
        watch.pop(job.name, None)


async def _run_round(config: Config, job: RoundJob, control: Control,
                     on_start: Callable[[int], None],
                     watch: dict[str, tuple[RoundJob, LineSink]], backend: Any) -> Outcome:
    log = get_logger(**job.fields())
    started = time.time()
    folder = paths.round_dir(config, job.name)
    # A stale result from an earlier attempt must never pass for this attempt's; a round
    # still running where a restarted supervisor found it (Slurm) owns its folder.
    if not getattr(backend, "adopted", lambda name: False)(job.name):
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(folder, ignore_errors=True))
    sink = LineSink(config, job)
    watch[job.name] = (job, sink)
    argv = command(config, job, getattr(backend, "gpu_value", None))
    log.info("round_started", seed=job.seed, attempt=job.attempt, argv=argv)
    try:
        exit_ = await backend.execute(config, job, argv, sink, on_start, control.stop,
                                      control.kill)
    except OSError as exc:
        return Outcome(job, FAILED, started, time.time(), reason=f"could not start: {exc}")
    except RoundLost as exc:  # not the round's fault: it runs again, elsewhere
        return Outcome(job, INTERRUPTED, started, time.time(), reason=str(exc),
                       tail=list(sink.tail))
    except RoundError as exc:
        return Outcome(job, FAILED, started, time.time(), reason=str(exc),
                       tail=list(sink.tail))
    finally:
        sink.close()
    outcome = Outcome(job, FAILED, started, time.time(), exit_code=exit_.returncode,
                      tail=list(sink.tail))
    if exit_.stopped == "stop":
        outcome.kind, outcome.reason = INTERRUPTED, "stopped by the supervisor"
        return outcome
    if exit_.stopped or exit_.returncode != 0:
        oom = endings.cuda_out_of_memory(outcome.tail)
        if oom is not None:  # capacity, not a failure of the round (core.transitions)
            outcome.kind, outcome.reason = OUT_OF_MEMORY, oom
            return outcome
        outcome.reason = endings.describe(exit_, config, outcome.tail,
                                          slots.node(job.gpu) is None)
        return outcome
    try:
        produced, columns = await anyio.to_thread.run_sync(
            results.read_accepted, paths.result(config, job.name, job.object_code),
            config.round_batch_size, config.filter, job.seed, job.round_id)
    except results.ResultError as exc:
        outcome.reason = f"invalid result: {exc}"
        return outcome
    outcome.kind, outcome.produced, outcome.columns = OK, produced, columns
    outcome.accepted = int(len(columns["energy"]))
    log.info("round_finished", seed=job.seed, attempt=job.attempt, produced=produced,
             accepted=outcome.accepted, duration_s=round(outcome.finished_at - started, 3),
             **job.placed())
    return outcome

