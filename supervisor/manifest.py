"""The manifest: the run's state on disk, written atomically, the basis of every resume.

Plain data and JSON; no I/O scheduling here. The merger is its only writer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from supervisor.fsutil import atomic_write_bytes

MANIFEST_VERSION = 1
MANIFEST_NAME = "manifest.json"

# Round statuses. "finished": validated, grasps held for the dataset, not yet in final.npz.
PENDING, RUNNING, INTERRUPTED = "pending", "running", "interrupted"
FINISHED, MERGED, FAILED, DISCARDED = "finished", "merged", "failed", "discarded"
TO_RUN = (PENDING, INTERRUPTED)
IN_FLIGHT = (RUNNING,)
HAS_GRASPS = (FINISHED, MERGED)
# Object statuses.
ACTIVE, DONE, OBJ_FAILED, EXHAUSTED = "active", "done", "failed", "exhausted"


class ManifestError(ValueError):
    """The manifest cannot be read or makes no sense; the message says how to recover."""


def now() -> float:
    return round(time.time(), 3)


@dataclass
class RoundRecord:
    round_id: int
    name: str
    seed: int
    status: str = PENDING
    attempts: int = 0
    gpu: int | None = None
    exit_code: int | None = None
    produced: int | None = None
    accepted: int | None = None
    used: int | None = None  # grasps of this round in the final dataset
    started_at: float | None = None
    finished_at: float | None = None
    reason: str | None = None
    pid: int | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy is the slowest part of writing a big manifest.
        data = {name: getattr(self, name) for name in ROUND_FIELDS}
        data["failures"] = [dict(f) for f in self.failures]
        return data


ROUND_FIELDS = tuple(f.name for f in fields(RoundRecord))


@dataclass
class ObjectRecord:
    code: str
    index: int
    target: int
    status: str = ACTIVE
    collected: int = 0  # accepted grasps in final.npz
    consecutive_failures: int = 0
    reason: str | None = None
    rounds: dict[int, RoundRecord] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status == DONE

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "target": self.target,
            "status": self.status,
            "done": self.done,
            "collected": self.collected,
            "consecutive_failures": self.consecutive_failures,
            "reason": self.reason,
            "rounds": {str(rid): r.to_json() for rid, r in sorted(self.rounds.items())},
        }


@dataclass
class Manifest:
    exp_name: str
    identity: dict[str, Any]
    config: dict[str, Any]
    objects: dict[str, ObjectRecord] = field(default_factory=dict)
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    runs: list[dict[str, Any]] = field(default_factory=list)

    def next_index(self) -> int:
        return max((o.index for o in self.objects.values()), default=-1) + 1

    def to_json(self) -> dict[str, Any]:
        data = self.to_json_without_objects()
        data["objects"] = {code: o.to_json() for code, o in self.objects.items()}
        return data

    # Encoded objects, reused until touch() says an object changed: a manifest of
    # thousands of objects is rewritten after every event, and most of them are done.
    _encoded: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    def touch(self, code: str) -> None:
        """Say that object ``code`` (or one of its rounds) changed since the last dumps()."""
        self._encoded.pop(code, None)

    def dumps(self) -> bytes:
        """The manifest as JSON, one line (json's C encoder only runs without indent)."""
        self.updated_at = now()
        head = self.to_json_without_objects()
        parts = []
        for code, obj in self.objects.items():
            encoded = self._encoded.get(code)
            if encoded is None:
                encoded = self._encoded[code] = _encode(obj.to_json())
            parts.append(_encode(code) + b":" + encoded)
        return _encode(head)[:-1] + b',"objects":{' + b",".join(parts) + b"}}\n"

    def to_json_without_objects(self) -> dict[str, Any]:
        return {
            "version": MANIFEST_VERSION,
            "exp_name": self.exp_name,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "identity": self.identity,
            "config": self.config,
            "runs": self.runs,
        }


def _encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _round_from_json(data: dict[str, Any]) -> RoundRecord:
    return RoundRecord(**data)


def from_json(data: Any) -> Manifest:
    """Rebuild a manifest; any missing or mistyped part raises ManifestError."""
    try:
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {MANIFEST_VERSION}")
        objects = {}
        for code, o in data["objects"].items():
            rounds = {int(k): _round_from_json(v) for k, v in o["rounds"].items()}
            for rid, rnd in rounds.items():
                if rnd.round_id != rid:
                    raise ValueError(f"{code}: round key {rid} holds round {rnd.round_id}")
            objects[code] = ObjectRecord(
                code=code, index=int(o["index"]), target=int(o["target"]),
                status=str(o["status"]), collected=int(o["collected"]),
                consecutive_failures=int(o["consecutive_failures"]),
                reason=o.get("reason"), rounds=rounds,
            )
        indices = [o.index for o in objects.values()]
        if len(set(indices)) != len(indices):
            raise ValueError("two objects share an index")
        return Manifest(
            exp_name=str(data["exp_name"]), identity=dict(data["identity"]),
            config=dict(data["config"]), objects=objects,
            created_at=float(data["created_at"]), updated_at=float(data["updated_at"]),
            runs=list(data.get("runs", [])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"unexpected content ({type(exc).__name__}: {exc})") from None


def load(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from None
    try:
        return from_json(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None


def save(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
