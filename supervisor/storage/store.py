"""Persistence of the state: the journal (every event, fsynced in groups) and the
manifest.json snapshot (every SNAPSHOT_EVERY_EVENTS events or SNAPSHOT_EVERY_S seconds,
on drain and at the end). Start-up = snapshot + journal replay through the same
state machine.

Only the merger writes (``Merger.commit``, ``Store.write_snapshot``); the dispatcher records the
rounds it starts (``record``), which changes the state in memory and queues the line.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.core import events as ev
from supervisor.storage import journal, manifest as mf, paths
from supervisor.core.records import now
from supervisor.core.state import Effect, Policy, State
from supervisor.core.transitions import apply

if TYPE_CHECKING:
    from supervisor.config.schema import Config

SNAPSHOT_EVERY_EVENTS = 5000
SNAPSHOT_EVERY_S = 60.0


def policy(config: Config) -> Policy:
    return policy_of_snapshot(config.snapshot())


def policy_of_snapshot(cfg: dict[str, Any]) -> Policy:
    """The decisions' settings from a config snapshot (the manifest's ``config``)."""
    retry, gpu = cfg.get("retry", {}), cfg.get("gpu", {})
    stride = cfg.get("merge_stride", "auto")
    return Policy(
        exp_name=str(cfg["exp_name"]), seed_base=int(cfg.get("seed_base", 0)),
        batch_size=int(cfg.get("round_batch_size", 512)),
        max_rounds=int(cfg.get("max_rounds", 1000)),
        max_attempts=int(retry.get("max_attempts", 3)),
        max_consecutive_failed_rounds=int(retry.get("max_consecutive_failed_rounds", 5)),
        quarantine_after=int(gpu.get("quarantine_after", 3)),
        merge_stride=None if stride == "auto" else int(stride),
        dedup=bool(cfg.get("dedup", {}).get("enabled", False)),
        packing=gpu.get("max_rounds_per_gpu", 1) == "auto",
        pack_gain=float(gpu.get("pack_gain", 0.1)),
        pack_retest_s=float(gpu.get("pack_retest_s", 1800.0)),
        validate=bool(cfg.get("validate", {}).get("kind") or cfg.get("validate", {}).get("command")),
        quarantine=cfg.get("backend", {}).get("kind") != "slurm",
    )


def replay(state: State, exp_dir: Path) -> State:
    """Apply the journal's events after the snapshot's, in order."""
    for seq, event in journal.read(paths.journal(exp_dir), state.seq):
        apply(state, event)
        state.seq = seq
    return state


def new_state(config: Config) -> State:
    return State(policy(config), config.identity(), config.snapshot(), now())


def load_state(config: Config) -> State:
    """Snapshot plus the journal's later events; ManifestError or JournalError if broken."""
    # Hundreds of thousands of small objects and no cycles: the cyclic GC would only
    # walk them again and again while they are built.
    enabled = gc.isenabled()
    gc.disable()
    try:
        state = replay(mf.load(paths.manifest(config.exp_dir), policy(config)), config.exp_dir)
    finally:
        if enabled:
            gc.enable()
    # The config's objects, for readers (status, export); a run registers them again.
    state.set_order([c for c in config.object_codes if c in state.objects])
    return state


class Store:
    def __init__(self, config: Config, state: State) -> None:
        self.config, self.state = config, state
        self.journal = journal.Journal(paths.journal(config.exp_dir))
        self.encoder = mf.Encoder()
        self.queued: list[bytes] = []
        self.since_snapshot = 0
        self.snapshot_at = time.monotonic()

    def record(self, event: ev.Event) -> list[Effect]:
        """Apply ``event`` now; it is durable after the next commit()."""
        effects = apply(self.state, event)
        self.state.seq += 1
        self.queued.append(ev.encode(self.state.seq, event))
        self.since_snapshot += 1
        return effects

    def take_queued(self) -> list[bytes]:
        lines, self.queued = self.queued, []
        return lines

    def snapshot_due(self) -> bool:
        return (self.since_snapshot >= SNAPSHOT_EVERY_EVENTS
                or time.monotonic() - self.snapshot_at >= SNAPSHOT_EVERY_S)

    def encode_snapshot(self) -> bytes:
        self.since_snapshot, self.snapshot_at = 0, time.monotonic()
        return self.encoder.dumps(self.state)

    def write_snapshot(self, data: bytes) -> None:
        """Blocking: the snapshot, then an empty journal (replay skips what it holds)."""
        mf.save(paths.manifest(self.config.exp_dir), data)
        self.journal.truncate()
