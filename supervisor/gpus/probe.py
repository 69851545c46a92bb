"""What a GPU probe is: the interface the pool, the sampler and the backends read GPUs
through, one look at a GPU (``Reading``) The probes themselves are the family
beside this module, one file each: ``nvml`` (the real one), ``static`` (a list of GPUs,
no memory figures), ``fake`` (for tests); ``choose`` picks one for a config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol

MIB = 1024 * 1024


class GpuError(RuntimeError):
    """No usable GPU set could be formed (NVML missing for gpus = "all", unknown index)."""


class ProbeError(RuntimeError):
    """Reading one GPU failed (for example it fell off the bus)."""


@dataclass(frozen=True)
class Reading:
    """One look at one GPU. Fields are None when the probe cannot know them (no NVML)."""

    free_mib: int | None = None
    total_mib: int | None = None
    util_percent: int | None = None
    # pid -> MiB of GPU memory NVML attributes to that process (compute processes)
    processes: Mapping[int, int] = field(default_factory=dict)

    @property
    def used_mib(self) -> int | None:
        if self.free_mib is None or self.total_mib is None:
            return None
        return self.total_mib - self.free_mib


class Probe(Protocol):
    def gpu_indices(self) -> list[int]: ...

    def read(self, index: int) -> Reading:
        """Blocking (NVML can hang on a failing card): call it from a worker thread.
        Raises ProbeError when the GPU cannot be read."""
