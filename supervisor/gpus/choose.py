"""Which probe a config gets: NVML when it starts (or is required), else the config's
list of GPUs without memory checks, with the warning to log."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from supervisor.gpus.emulated import EmulatorProbe
from supervisor.gpus.nvml import NvmlProbe
from supervisor.gpus.probe import GpuError, Probe, ProbeError
from supervisor.gpus.static import StaticProbe


def make_probe(kind: str, gpus: str | Sequence[int],
               env: Mapping[str, str] | None = None,
               cwd: Path | None = None) -> tuple[Probe, str | None]:
    """The probe for the config, and a warning to log when memory checks are off.
    ``env``, ``cwd``: the rounds' environment and folder (``[main]``), where the
    emulator's cards are."""
    if kind in ("static", "emulator") and gpus == "all":
        raise GpuError(f'gpu.probe = "{kind}" needs gpus to be a list of GPU indices')
    if kind == "emulator":
        return EmulatorProbe(list(gpus), env or {}, cwd), None
    if kind == "static":
        return StaticProbe(list(gpus)), "GPU memory checks are off (gpu.probe = \"static\")"
    try:
        return NvmlProbe(), None
    except ProbeError as exc:
        if kind == "nvml":
            hint = ('[gpu] probe = "nvml" needs NVML: install the NVIDIA driver, or use '
                    + ('probe = "auto" (NVML if it starts, else the gpus list) or "static" '
                       '(the gpus list, no memory checks)' if gpus != "all" else
                       'probe = "auto" with a list of GPU indices, e.g. gpus = [0, 1]'))
            raise GpuError(f"{exc}; {hint}") from None
        if gpus == "all":
            hint = ('gpus = "all" needs NVML to find the GPUs: install the NVIDIA driver or '
                    'list the GPU indices, e.g. gpus = [0, 1]')
            raise GpuError(f"{exc}; {hint}") from None
        return StaticProbe(list(gpus)), f"{exc}: using gpus {list(gpus)} without memory checks"
