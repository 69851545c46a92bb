"""The helper as the supervisor drives it: one child per worker in BimanGrasp's Python
(``[view] command``, default the interpreter of ``[main] command``) in the checkout's
folder (``[view] cwd``, default ``[main] cwd``), CUDA hidden, one request at a time, each
answer within ``[view] timeout_s``. A helper that fails, hangs or dies is a
``HelperError`` with one line naming the cause and the fix; it never takes more than the
object it was drawing.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HELPER = Path(__file__).with_name("helper.py")
PREFIX = "@gallery "
FIRST_ANSWER_GRACE_S = 60.0  # importing torch on a cold disk, before the first request


class HelperError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child before exec: killed when the supervisor's process ends, however it
    ends (Linux; elsewhere Ctrl+C still reaches it: it stays in our process group)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def helper_argv(command: Sequence[str], out_dir: Path) -> list[str]:
    return [sys.executable if c == "{python}" else c for c in command] + \
        [str(HELPER), str(out_dir)]


class Helper:
    """One helper process; ``request`` sends one line and returns the answer's fields."""

    def __init__(self, command: Sequence[str], cwd: Path, env: dict[str, str],
                 timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.cwd = cwd
        full = dict(os.environ, **env, CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
        if not cwd.is_dir():  # a moved checkout: the read-only commands still load
            raise HelperError(f"[view] cwd {cwd} is not a folder: point it (or [main] cwd) "
                              f"at the checkout's BimanGrasp-Optimization")
        self.out_dir = Path(tempfile.mkdtemp(prefix="supervisor-gallery-"))
        try:
            self.proc = subprocess.Popen(
                helper_argv(command, self.out_dir), cwd=cwd, env=full, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent)
        except OSError as exc:
            shutil.rmtree(self.out_dir, ignore_errors=True)
            raise HelperError(f"cannot start the gallery's helper with {command[0]!r}: "
                              f"{exc.strerror}; set [view] command to BimanGrasp's Python"
                              ) from None
        self.answers: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self._wait(self.timeout_s + FIRST_ANSWER_GRACE_S, "while starting")
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(PREFIX):
                try:
                    self.answers.put(json.loads(line[len(PREFIX):]))
                except ValueError:
                    continue
        self.answers.put(None)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr = (self.stderr + [line.rstrip()])[-20:]

    def _wait(self, timeout_s: float, what: str) -> dict[str, Any]:
        try:
            got = self.answers.get(timeout=timeout_s)
        except queue.Empty:
            self.close()
            raise HelperError(f"the gallery's helper did not answer {what} within "
                              f"{timeout_s:g} s; raise [view] timeout_s if the checkout "
                              f"is slow to load") from None
        if got is None:
            code = self.proc.wait()
            self.close()
            if code < 0:
                raise HelperError(f"the gallery's helper was killed (signal {-code}) {what}")
            tail = next((s for s in reversed(self.stderr) if s.strip()), "no output")
            raise HelperError(f"the gallery's helper ended (exit {code}) {what}: {tail}; "
                              f"check [view] command and cwd (BimanGrasp's Python, its "
                              f"BimanGrasp-Optimization)")
        if not got.get("ok"):
            error = str(got.get("error", "failed"))
            fix = f"; {got['fix']}" if got.get("fix") else ""
            last = str(got["where"][-1]).strip() if got.get("where") else ""
            where = f" ({last})" if last and last not in error and error not in last else ""
            raise HelperError(f"{error}{where}{fix}")
        return got

    def request(self, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(fields) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it ended: the answer queue says how
        return self._wait(self.timeout_s, f"while drawing {fields.get('op')}")

    def load(self, path: str) -> dict[str, np.ndarray]:
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        os.unlink(path)
        return arrays

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.out_dir, ignore_errors=True)


def qpos_dict(row: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    return {str(n): float(v) for n, v in zip(names, row)}
