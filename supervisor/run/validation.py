"""[validate]: the validation pool. A produced round's accepted grasps are validated in
worker processes (``[validate] workers`` at once) while the GPUs go on generating: the
built-in validator takes a round in parts of ``PART_GRASPS`` grasps
(``python -m supervisor.validate.task REQUEST``), a lab's command takes the round's whole
result file. A task that crashes, hangs past ``timeout_s`` or writes a malformed output
runs again, up to ``max_attempts``; then the run stops, naming the validator.

A round's figures are written atomically to its validation file
(``supervisor.dataset.validation``) before the merger records ``RoundValidated``; a
round whose file is already there (a kill came between the two) is not validated again.
The pool stops when the dispatcher has ended: what is not validated then stays to
validate for the next run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from anyio.streams.memory import MemoryObjectSendStream

from supervisor.backends import runner
from supervisor.config.schema import Config
from supervisor.core.records import RoundStatus
from supervisor.core.state import State
from supervisor.dataset import validation
from supervisor.logs import get_logger
from supervisor.storage import paths
from supervisor.storage.fsutil import atomic_write_bytes

PART_GRASPS = 16  # built-in: grasps per task (about 30 s of one core)
TAIL_LINES = 5
GRACE_S = 5.0


@dataclass(frozen=True)
class Validated:
    """To the merger: a round's figures, for its accepted grasps ``items``."""
    code: str
    round_id: int
    items: np.ndarray
    figures: dict[str, np.ndarray]


@dataclass(frozen=True)
class ValidationFailed:
    """To the merger: the validator kept failing on a round; the run stops."""
    code: str
    round_id: int
    reason: str


@dataclass
class _Round:
    code: str
    round_id: int
    name: str
    seed: int
    result: Path  # main.py's result file
    items: np.ndarray  # the accepted grasps' item indices
    produced: int
    parts: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    todo: int = 0


@dataclass
class _Task:
    work: _Round
    part: int
    items: np.ndarray  # built-in: these grasps; a command: the whole file
    attempts: int = 0


def workers(config: Config, local_gpus: int) -> int:
    """``[validate] workers``; "auto": the cores the rounds' threads leave, at least one."""
    if config.validate.workers != "auto":
        return int(config.validate.workers)
    return max(1, (os.cpu_count() or 1) - local_gpus * config.main.threads)


class Validations:
    def __init__(self, config: Config, state: State, local_gpus: int) -> None:
        self.config, self.state = config, state
        self.settings = config.validate
        self.count = workers(config, local_gpus)
        self.log = get_logger()
        self.send_task, self.tasks = anyio.create_memory_object_stream[_Task](math.inf)
        self.send: MemoryObjectSendStream[Any] | None = None
        self.scope = anyio.CancelScope()
        self.work_dir = config.exp_dir / "validation" / ".work"
        self.stopped = False

    # -- from the merger (synchronous) ---------------------------------------------------
    def submit(self, code: str, round_id: int, items: np.ndarray, produced: int) -> None:
        """Validate the round's accepted grasps ``items`` (item indices in its file)."""
        rnd = self.state.round_of(code, round_id)
        work = _Round(code, round_id, rnd.name, rnd.seed,
                      paths.result(self.config, rnd.name, code), np.asarray(items), produced)
        if self.settings.command:
            parts = [work.items]
        else:
            parts = [work.items[i:i + PART_GRASPS]
                     for i in range(0, len(work.items), PART_GRASPS)]
        work.todo = len(parts)
        for k, part in enumerate(parts):
            self.send_task.send_nowait(_Task(work, k, part))

    # -- the pool ------------------------------------------------------------------------
    async def run(self, send: MemoryObjectSendStream[Any]) -> None:
        """Validate until ``finish``; ``send`` (to the merger) is closed on the way out."""
        async with send:
            self.send = send
            shutil.rmtree(self.work_dir, ignore_errors=True)
            with self.scope:
                async with anyio.create_task_group() as tg:
                    for n in range(self.count):
                        tg.start_soon(self._worker, n)
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def finish(self) -> None:
        """Stop now (tasks running are killed): the rest is validated by the next run."""
        self.stopped = True
        self.scope.cancel()

    async def _worker(self, n: int) -> None:
        async for task in self.tasks.clone():
            if self.stopped:
                return
            work = task.work
            if self.state.round_of(work.code, work.round_id).status != RoundStatus.VALIDATING:
                continue  # not needed any more (its object is done)
            if task.part == 0 and await self._already(work):
                continue
            error = await self._attempt(task, n)
            if error is None:
                if not work.todo:
                    await self._done(work)
                continue
            task.attempts += 1
            if task.attempts < self.settings.max_attempts:
                self.log.warning("validation_retry", object_code=work.code, round=work.name,
                                 attempt=task.attempts, reason=error)
                self.send_task.send_nowait(task)
                continue
            assert self.send is not None
            await self.send.send(ValidationFailed(work.code, work.round_id, (
                f"[validate] {self._what()} failed {task.attempts} times on round "
                f"{work.name}: {error}")))

    def _what(self) -> str:
        return f"command {self.settings.command[0]!r}" if self.settings.command else \
            'kind = "mujoco"'

    async def _already(self, work: _Round) -> bool:
        """A kill between writing a round's figures and recording them: use them."""
        file = validation.path(self.config.exp_dir, work.code, work.round_id)
        if not file.exists():
            return False
        try:
            items, figures = await anyio.to_thread.run_sync(validation.read, file)
        except validation.ValidationError:
            return False
        if not np.array_equal(items, work.items):
            return False
        assert self.send is not None
        await self.send.send(Validated(work.code, work.round_id, items, figures))
        work.todo = -1  # the other parts are skipped
        return True

    async def _attempt(self, task: _Task, n: int) -> str | None:
        """Run one task; its figures go to its round. Returns why it failed, or None."""
        work = task.work
        if work.todo < 0:
            return None
        folder = self.work_dir / f"w{n}"
        folder.mkdir(parents=True, exist_ok=True)
        out = folder / f"{work.name}-{task.part}.npz"
        out.unlink(missing_ok=True)
        argv, cwd = self._argv(task, folder, out)
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        env = {**os.environ, **self.settings.env}
        try:
            exit_ = await runner.run_child(
                argv, cwd=cwd, env=env, on_line=lambda _s, line: tail.append(line),
                timeout_s=self.settings.timeout_s, grace_s=GRACE_S)
        except OSError as exc:
            return f"could not start it: {exc}"
        if exit_.stopped == "timeout":
            return f"no answer in [validate] timeout_s = {self.settings.timeout_s:g} s"
        if exit_.returncode != 0:
            last = "; ".join(tail)
            return f"exit code {exit_.returncode}" + (f" ({last})" if last else "")
        expected = work.produced if self.settings.command else len(task.items)
        try:
            figures = await anyio.to_thread.run_sync(validation.read_output, out, expected)
        except validation.ValidationError as exc:
            return f"malformed output: {exc}"
        finally:
            out.unlink(missing_ok=True)
        if self.settings.command:  # the whole file: the accepted grasps' figures
            figures = {k: v[work.items] for k, v in figures.items()}
        work.parts[task.part] = figures
        work.todo -= 1
        return None

    def _argv(self, task: _Task, folder: Path, out: Path) -> tuple[list[str], Path]:
        work = task.work
        if self.settings.command:
            values = {"results": str(work.result), "object_code": work.code, "out": str(out),
                      "python": sys.executable, "seed": str(work.seed), "name": work.name}
            argv = [part.format(**values) for part in self.settings.command]
            return argv, self.settings.cwd or self.config.main.cwd
        request = folder / f"{work.name}-{task.part}.json"
        atomic_write_bytes(request, json.dumps({
            "results": str(work.result), "items": [int(i) for i in task.items],
            "object_code": work.code, "checkout": str(self.config.main.cwd),
            "settings": self.settings.protocol(), "out": str(out)}).encode())
        return [sys.executable, "-m", "supervisor.validate.task", str(request)], folder

    async def _done(self, work: _Round) -> None:
        """Every part validated: the round's file, then the message."""
        parts = [work.parts[k] for k in sorted(work.parts)]
        figures = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts \
            else {validation.PASSED: np.zeros(0, bool)}
        file = validation.path(self.config.exp_dir, work.code, work.round_id)
        await anyio.to_thread.run_sync(validation.write, file, work.items, figures)
        assert self.send is not None
        await self.send.send(Validated(work.code, work.round_id, work.items, figures))
