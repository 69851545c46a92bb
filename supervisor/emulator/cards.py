"""Emulated GPU cards that rounds share, so that packing and out-of-memory can be tested
without a GPU. Rounds whose ``CUDA_VISIBLE_DEVICES`` (after the GPU trap) name the same
card share it, through a folder per card under ``EMULATOR_GPU_DIR``:

- ``EMULATOR_GPU_CURVE=F1,F2,F3,...``: the card's total throughput with 1, 2, 3, ...
  rounds iterating on it, relative to one round (beyond the list: the last value); each
  of k rounds iterates at ``F[k] / k`` of its solo speed, re-evaluated as rounds come and
  go (default: 1, every round at full speed whatever the others do);
- ``EMULATOR_GPU_MEMORY_MIB``: the card's size (default 81920);
  ``EMULATOR_ROUND_MEMORY_MIB``: one round's footprint (default 0), which appears
  ``EMULATOR_MEMORY_DELAY_S`` (default 0.1) after the models are set up, as on a real card
  (before it NVML shows the CUDA context only, ``CONTEXT_MIB``); a round that would take
  the card past its size prints torch's out-of-memory traceback and exits 1.

Each round is a file ``{pid}.json`` in its card's folder, ``{"mib": ..., "iterating":
...}``, removed when the round ends (a killed round's file is ignored once its pid is
gone). Another user's job is a file ``foreign-*.json`` with ``{"mib": ..., "load": N}``:
its memory counts, and it iterates like N rounds. ``supervisor.gpus.emulated`` reads the
same folders as NVML would read real cards.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

CONTEXT_MIB = 14  # what NVML shows of a round before its tensors exist (seen on an H200)
DEFAULT_CARD_MIB = 81920
RECHECK_S = 0.05  # how often a round looks again at how many share its card


def curve(spec: str) -> tuple[float, ...]:
    """``EMULATOR_GPU_CURVE`` as the card's throughput with 1, 2, ... rounds."""
    try:
        values = tuple(float(v) for v in spec.split(",")) if spec.strip() else (1.0,)
    except ValueError:
        values = ()
    if not values or not all(0 < v < math.inf for v in values):
        raise ValueError(f"EMULATOR_GPU_CURVE={spec!r}: expected positive numbers F1,F2,...")
    return values


def per_round(values: tuple[float, ...], k: int) -> float:
    """The speed of each of ``k`` rounds on a card, relative to one round alone."""
    k = max(1, k)
    return values[min(k, len(values)) - 1] / k


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def entries(folder: Path) -> list[tuple[int | None, dict[str, Any]]]:
    """The card's live rounds (pid, record) and other jobs (None, record)."""
    found: list[tuple[int | None, dict[str, Any]]] = []
    for path in folder.glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written or removed
        if path.stem.isdigit():
            if _alive(int(path.stem)):
                found.append((int(path.stem), record))
        elif path.stem.startswith("foreign"):
            found.append((None, record))
    return found


def used_mib(folder: Path) -> int:
    return sum(int(r.get("mib", 0)) for _, r in entries(folder))


def iterating(folder: Path) -> int:
    """Rounds iterating on the card, other jobs counted by their load."""
    return sum(int(r.get("load", 0)) if pid is None else int(bool(r.get("iterating")))
               for pid, r in entries(folder))


class Card:
    """This process's place on its card."""

    def __init__(self, root: Path, device: str, env: dict[str, str]) -> None:
        self.folder = root / f"gpu{device}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.path = self.folder / f"{os.getpid()}.json"
        self.curve = curve(env.get("EMULATOR_GPU_CURVE", ""))
        self.size_mib = int(env.get("EMULATOR_GPU_MEMORY_MIB", "") or DEFAULT_CARD_MIB)
        footprint = env.get("EMULATOR_ROUND_MEMORY_MIB", "") or "0"
        if not (footprint.isascii() and footprint.isdigit()):
            raise ValueError(f"EMULATOR_ROUND_MEMORY_MIB={footprint!r}: expected MiB, "
                             f"e.g. 6000")
        self.round_mib = int(footprint)
        self.delay_s = float(env.get("EMULATOR_MEMORY_DELAY_S", "") or 0.1)
        self.record = {"mib": CONTEXT_MIB, "iterating": False}
        self._speed, self._checked = 1.0, -1.0
        self._write()
        atexit.register(self.leave)

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record))
        os.replace(tmp, self.path)

    def allocate(self) -> None:
        """The round's tensors appear; past the card's size: torch's error, exit 1."""
        time.sleep(self.delay_s)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two rounds never both see the same room
            others = used_mib(self.folder) - int(self.record["mib"])
            if others + self.round_mib > self.size_mib:
                self.leave()
                out_of_memory(self.round_mib, self.size_mib, others)
            self.record["mib"] = CONTEXT_MIB + self.round_mib
            self._write()

    def start_iterating(self) -> None:
        self.record["iterating"] = True
        self._write()

    def speed(self) -> float:
        """This round's speed now, relative to alone (looked at every RECHECK_S)."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            self._speed = per_round(self.curve, iterating(self.folder))
        return self._speed

    def leave(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def out_of_memory(want_mib: int, size_mib: int, used_mib_: int) -> None:
    """What torch prints when an allocation does not fit, and main.py's exit status."""
    free = max(0, size_mib - used_mib_)
    sys.stderr.write(
        "Traceback (most recent call last):\n"
        '  File "main.py", line 163, in <module>\n'
        "    energy, E_fc, E_dis, E_pen, E_spen, E_joints = calculate_energy(bimanual_pair)\n"
        '  File "utils/bimanual_energy.py", line 175, in compute_object_penetration\n'
        "    distances = object_model.cal_distance(points)\n"
        f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
        f"{want_mib / 1024:.2f} GiB. GPU 0 has a total capacity of {size_mib / 1024:.2f} GiB "
        f"of which {free / 1024:.2f} GiB is free. Including non-PyTorch memory, this process "
        f"has {CONTEXT_MIB} MiB memory in use. Of the allocated memory 0 bytes is allocated "
        "by PyTorch, and 0 bytes is reserved by PyTorch but unallocated. If reserved but "
        "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF="
        "expandable_segments:True to avoid fragmentation.  See documentation for Memory "
        "Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)\n")
    sys.stderr.flush()
    os._exit(1)


def attach(device: str) -> Card | None:
    """This round's card when ``EMULATOR_GPU_DIR`` is set (else cards are not shared)."""
    root = os.environ.get("EMULATOR_GPU_DIR")
    if not root or device == "cpu":
        return None
    return Card(Path(root), os.environ.get("CUDA_VISIBLE_DEVICES", device),
                dict(os.environ))
