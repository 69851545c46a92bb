"""A probe without NVML: the config's list of GPUs, no memory figures."""

from __future__ import annotations

from typing import Sequence

from supervisor.gpus.probe import Reading


class StaticProbe:
    """An explicit list of GPUs without memory checks (no NVML, or probe = "static")."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)

    def gpu_indices(self) -> list[int]:
        return list(self.indices)

    def read(self, index: int) -> Reading:
        return Reading()
