"""The real probe: NVML through pynvml, imported only when this probe is made, so CPU
machines never need a driver."""

from __future__ import annotations

from supervisor.gpus.probe import MIB, ProbeError, Reading


class NvmlProbe:
    """GPUs from NVML, numbered in PCI bus order (CUDA_DEVICE_ORDER=PCI_BUS_ID)."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as exc:  # pragma: no cover - nvidia-ml-py is a dependency
            raise ProbeError(f"pynvml is not installed ({exc})") from None
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise ProbeError(f"NVML did not start ({exc})") from None

    def gpu_indices(self) -> list[int]:
        try:
            return list(range(self._nvml.nvmlDeviceGetCount()))
        except self._nvml.NVMLError as exc:
            raise ProbeError(f"NVML could not count GPUs ({exc})") from None

    def read(self, index: int) -> Reading:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except nvml.NVMLError as exc:
            raise ProbeError(f"NVML error on GPU {index} ({exc})") from None
        util = processes = None
        try:
            util = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nvml.NVMLError:
            pass  # not supported on every card: memory is what admission needs
        try:
            processes = {
                int(p.pid): int((p.usedGpuMemory or 0) // MIB)
                for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            }
        except nvml.NVMLError:
            pass
        return Reading(int(memory.free // MIB), int(memory.total // MIB), util, processes or {})
