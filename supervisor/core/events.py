"""The events that change an experiment's state, as the journal stores them.

Each is a frozen dataclass of JSON-able fields; ``encode``/``decode`` turn one into a
journal line and back. ``supervisor.core.transitions.apply`` is the only thing that acts on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from supervisor.core.slots import GpuKey


@dataclass(frozen=True)
class ObjectsRegistered:
    """The run's object list and target: new objects get the next indices, targets are
    raised, failed or exhausted objects get another chance."""
    codes: tuple[str, ...]
    target: int


@dataclass(frozen=True)
class SupervisorStarted:
    """A (re)start: rounds a dead supervisor left running are to be rerun."""
    pid: int
    host: str
    argv: tuple[str, ...]
    at: float
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)
    gpus: tuple[GpuKey, ...] = ()
    # [validate]: what validates this run's grasps (its identity, and MuJoCo's version for
    # the built-in: a resumed run may run on another); {} without [validate]
    validator: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SupervisorStopped:
    at: float
    exit_code: int


@dataclass(frozen=True)
class RoundStarted:
    code: str
    round_id: int
    gpu: GpuKey
    at: float
    node: str | None = None


@dataclass(frozen=True)
class RoundSpawned:
    code: str
    round_id: int
    pid: int
    proc_start: int | None = None


@dataclass(frozen=True)
class RoundPlaced:
    """A scheduler took the round (Slurm): its job id once submitted, then the node and
    the GPU (as the job sees it) once it runs there."""
    code: str
    round_id: int
    job_id: str
    node: str | None = None
    gpu: int | str | None = None  # "0,1" for a job given two


@dataclass(frozen=True)
class RoundProduced:
    code: str
    round_id: int
    produced: int
    accepted: int
    at: float
    duration_s: float
    gpu_mib: int | None = None  # the most GPU memory NVML showed for it (None: unknown)


@dataclass(frozen=True)
class RoundDeduped:
    """[dedup]: ``unique`` of the round's accepted grasps are not near-duplicates of
    grasps kept before them in (round_id, item_index) order."""
    code: str
    round_id: int
    unique: int


@dataclass(frozen=True)
class RoundFailed:
    code: str
    round_id: int
    gpu: GpuKey | None
    reason: str
    at: float
    duration_s: float
    exit_code: int | None = None


@dataclass(frozen=True)
class RoundInterrupted:
    code: str
    round_id: int
    reason: str
    at: float
    duration_s: float


@dataclass(frozen=True)
class RoundOutOfMemory:
    """The round's output showed a CUDA out-of-memory error. ``alone``: no other round
    shared its card while it ran; ``free_mib``: the card's free memory once it had ended;
    ``estimate_mib``: what one round is expected to take."""
    code: str
    round_id: int
    gpu: GpuKey
    reason: str
    at: float
    duration_s: float
    alone: bool = False
    free_mib: int | None = None
    estimate_mib: int | None = None


@dataclass(frozen=True)
class PackingMeasured:
    """A card's throughput at ``level`` rounds at once, from its rounds' progress:
    ``gain`` relative to one round iterating alone, in wall time (start-ups included;
    objects compared like with like), and grasps per second; ``room``: memory admits one
    more round now; ``round_s``: how long a round holds its place there; ``held``: the
    rounds on the card then (iterating or not); ``sharing``: the gain with all of them
    iterating (what sharing the card costs, start-ups left out; 0: not measured)."""
    gpu: GpuKey
    level: int
    gain: float
    grasps_per_s: float
    room: bool
    round_s: float
    at: float
    held: int = 0
    sharing: float = 0.0


@dataclass(frozen=True)
class GpuLost:
    gpu: GpuKey
    reason: str


@dataclass(frozen=True)
class NoCardFits:
    """Every card the run may use is smaller than what one round needs free, and no round
    runs anywhere (none can teach a smaller footprint): ``reason`` names them and why."""
    reason: str


@dataclass(frozen=True)
class RoundValidated:
    """[validate]: a produced round's accepted grasps were validated; ``passed`` of them
    held, the others failed, counted by reason. Its figures are in the experiment's
    validation/ folder (written before this event)."""
    code: str
    round_id: int
    passed: int
    failed_by: dict[str, int]
    at: float


@dataclass(frozen=True)
class ValidationStopped:
    """[validate]: the validator kept failing on a round (crashed, hung, wrote a malformed
    output ``max_attempts`` times): the run stops, nothing unvalidated merged."""
    code: str
    round_id: int
    reason: str


@dataclass(frozen=True)
class RunStuck:
    """Nothing runs and no healthy GPU has a round to take, though objects are
    unfinished: the run would wait for ever. ``reason`` says so; the run stops."""
    reason: str


@dataclass(frozen=True)
class GpuAdded:
    """A cluster GPU that joined while the run goes on (a new node, a replaced worker)."""
    gpu: GpuKey


@dataclass(frozen=True)
class DatasetWritten:
    """final.npz now holds ``rows`` grasps: ``used`` maps round ids to their rows."""
    code: str
    used: dict[int, int]
    rows: int
    final_bytes: int
    final_mtime_ns: int
    digest: str | None = None  # supervisor.dataset.final.digest of its arrays


@dataclass(frozen=True)
class ObjectReloaded:
    """What resume found on disk for an unfinished object: rows per round in final.npz,
    rounds re-read from their folders (produced, accepted), and rounds whose grasps are
    nowhere (with the reason)."""
    code: str
    in_final: dict[int, int]
    from_folders: dict[int, tuple[int, int]]
    missing: dict[int, str]
    # The final.npz that holds ``in_final``, as found (None: no file, or an old journal).
    final_bytes: int | None = None
    final_mtime_ns: int | None = None
    digest: str | None = None
    # [validate]: rounds of from_folders whose validation had not been recorded (still to do)
    validating: tuple[int, ...] = ()


@dataclass(frozen=True)
class ObjectRecovered:
    """recover, the manifest lost: an object as its files show it. ``folders`` lists the
    round ids that have a folder, readable or not."""
    code: str
    index: int
    target: int
    in_final: dict[int, int]
    from_folders: dict[int, tuple[int, int]]
    folders: tuple[int, ...] = ()


@dataclass(frozen=True)
class DatasetLost:
    code: str
    reason: str


Event = (ObjectsRegistered | SupervisorStarted | SupervisorStopped | RoundStarted
         | RoundSpawned | RoundPlaced | RoundProduced | RoundDeduped | RoundFailed | RoundInterrupted
         | RoundOutOfMemory | PackingMeasured | GpuLost | NoCardFits | GpuAdded
         | DatasetWritten | RunStuck | RoundValidated | ValidationStopped | ObjectReloaded | ObjectRecovered | DatasetLost)
TYPES: dict[str, type] = {t.__name__: t for t in (
    ObjectsRegistered, SupervisorStarted, SupervisorStopped, RoundStarted, RoundSpawned,
    RoundPlaced, RoundProduced, RoundDeduped, RoundFailed, RoundInterrupted, RoundOutOfMemory,
    PackingMeasured, GpuLost, NoCardFits, GpuAdded, DatasetWritten, ObjectReloaded,
    ObjectRecovered, DatasetLost, RunStuck, RoundValidated, ValidationStopped,
)}
# JSON turns int keys and tuples into strings and lists: these fields are restored.
_INT_KEYED = ("in_final", "from_folders", "missing", "used")


def encode(seq: int, event: Event) -> bytes:
    data: dict[str, Any] = {"seq": seq, "type": type(event).__name__}
    data.update({f.name: getattr(event, f.name) for f in fields(event)})  # type: ignore[arg-type]
    return json.dumps(data, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> tuple[int, Event]:
    """One journal line; raises ValueError when it is not one."""
    data = json.loads(line)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    seq, kind = int(data.pop("seq")), TYPES[data.pop("type")]
    for key in _INT_KEYED:
        if key in data:
            data[key] = {int(k): tuple(v) if isinstance(v, list) else v
                         for k, v in data[key].items()}
    for key in ("codes", "argv", "folders", "gpus", "validating"):
        if key in data:
            data[key] = tuple(data[key])
    return seq, kind(**data)
