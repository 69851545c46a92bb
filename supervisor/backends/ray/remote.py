"""What crosses between the head and a node: a GPU slot of the cluster and how a remote
round ended (with its result files' bytes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from supervisor.storage.fsutil import atomic_write_bytes


@dataclass(frozen=True, order=True)
class Slot:
    node: str  # Ray node id (hex)
    gpu: int  # the physical GPU id Ray assigned: give it to --gpu
    host: str = field(default="", compare=False)  # the node's IP address

    def __str__(self) -> str:
        return f"{self.host or '?'}/{self.node[:8]}/gpu{self.gpu}"


@dataclass(frozen=True)
class RemoteExit:
    returncode: int | None  # None when the child's exit was never seen (lost, not started)
    stopped: str | None  # "timeout", "stall" or "stop" when it was ended, else None
    node: str
    result: bytes | None  # {output_dir}/{name}/results/{object_code}.npy, None if missing
    config: bytes | None  # .../results/config.txt
    pid: int | None = None  # the round's group leader on the node
    lost: str | None = None  # "node lost: ..." / "worker lost: ...": retry elsewhere
    error: str | None = None  # "could not start: ...", "node error: ..."

    def mirror(self, output_dir: str | Path, name: str, object_code: str) -> Path:
        """Write the files that came back into the head's round folder, where
        ``paths.result`` and ``results.read_accepted`` expect them; returns the folder."""
        results = Path(output_dir) / name / "results"
        results.mkdir(parents=True, exist_ok=True)
        for data, file in ((self.config, "config.txt"), (self.result, f"{object_code}.npy")):
            if data is not None:  # durable before the round counts as produced
                atomic_write_bytes(results / file, data)
        return results.parent
