"""manifest.json: a snapshot of the state, the file users and ``jq`` read.

Written atomically every so many events or seconds, on drain and at the end; the journal
holds the events since (``journal_seq`` says which were folded in). Only objects that
changed since the last snapshot are encoded again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from supervisor.core import slots
from supervisor.storage.fsutil import atomic_write_bytes
from supervisor.core.records import GpuRecord, ObjectRecord, now
from supervisor.core.state import Policy, State

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """The manifest cannot be read or makes no sense; the message says how to recover."""


def _encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class Encoder:
    """Encodes a State as manifest.json, reusing the encoding of unchanged objects."""

    def __init__(self) -> None:
        self.cache: dict[str, bytes] = {}

    def dumps(self, state: State) -> bytes:
        state.updated_at = now()
        for code in state.dirty:
            self.cache.pop(code, None)
        state.dirty.clear()
        parts = []
        for code, obj in state.objects.items():
            encoded = self.cache.get(code)
            if encoded is None:
                encoded = self.cache[code] = _encode(obj.to_json())
            parts.append(_encode(code) + b":" + encoded)
        return _encode(head(state))[:-1] + b',"objects":{' + b",".join(parts) + b"}}\n"


def head(state: State) -> dict[str, Any]:
    return {
        "version": MANIFEST_VERSION,
        "exp_name": state.policy.exp_name,
        "created_at": state.created_at,
        "updated_at": state.updated_at,
        "journal_seq": state.seq,
        "identity": state.identity,
        "config": state.config,
        "runs": state.runs,
        "gpus": {str(g): r.to_json() for g, r in sorted(state.gpus.items(),
                                                         key=lambda i: slots.order(i[0]))},
    }


def to_json(state: State) -> dict[str, Any]:
    return json.loads(Encoder().dumps(state))


def from_json(data: Any, policy: Policy) -> State:
    """Rebuild a State; any missing or mistyped part raises ManifestError."""
    try:
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {MANIFEST_VERSION}")
        state = State(policy, dict(data["identity"]), dict(data["config"]),
                      float(data["created_at"]))
        state.updated_at = float(data["updated_at"])
        state.seq = int(data.get("journal_seq", 0))
        state.runs = list(data.get("runs", []))
        state.gpus = {slots.parse(g): GpuRecord.from_json(r)
                      for g, r in data.get("gpus", {}).items()}
        for code, o in data["objects"].items():
            state.add_object(ObjectRecord.from_json(code, o))
        indices = [o.index for o in state.objects.values()]
        if len(set(indices)) != len(indices):
            raise ValueError("two objects share an index")
        if str(data["exp_name"]) != policy.exp_name:
            raise ValueError(f"exp_name {data['exp_name']!r}, expected {policy.exp_name!r}")
        return state
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ManifestError(f"unexpected content ({type(exc).__name__}: {exc})") from None


def load(path: Path, policy: Policy) -> State:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{path}: unreadable ({exc})") from None
    try:
        return from_json(data, policy)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from None


def save(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)
