"""A stand-in for BimanGrasp's main.py on a real GPU (docs/main-py.md contract).

Like main.py it sets CUDA_VISIBLE_DEVICES from --gpu itself before CUDA starts (the GPU
trap), then takes GPU memory with torch, records where it landed and what environment
it was given in $GPU_CHECK_RECORDS/{name}.json, and runs the project's emulator
in-process (holding the memory) so the round produces a valid result file.

GPU_CHECK_ALLOC_MIB (default 1024): memory to take. GPU_CHECK_NO_TORCH=1: skip torch
(dry run on a machine without a GPU).
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from supervisor.emulator import program as emulator  # noqa: E402


def main() -> None:
    argv = sys.argv[1:]
    args = emulator.build_parser().parse_args(argv)
    record = {
        "t_start": time.time(), "pid": os.getpid(), "ppid": os.getppid(),
        "pgid": os.getpgrp(), "sid": os.getsid(0), "name": args.name, "gpu_arg": args.gpu,
        "env_seen": {k: os.environ.get(k) for k in (
            "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "OMP_NUM_THREADS",
            "PYTHONUNBUFFERED")},
    }
    os.environ["CUDA_VISIBLE_DEVICES"] = str(args.gpu)  # what main.py does
    keep = None
    if os.environ.get("GPU_CHECK_NO_TORCH") != "1":
        import torch
        mib = int(os.environ.get("GPU_CHECK_ALLOC_MIB", "1024"))
        keep = torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda")
        keep.fill_(1)
        torch.cuda.synchronize()
        props = torch.cuda.get_device_properties(0)
        pci = None
        if hasattr(props, "pci_bus_id"):
            pci = "%04x:%02x:%02x" % (getattr(props, "pci_domain_id", 0), props.pci_bus_id,
                                      getattr(props, "pci_device_id", 0))
        record.update(
            device_name=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
            torch_pci=pci, uuid=str(getattr(props, "uuid", "")), alloc_mib=mib,
            reserved_mib=torch.cuda.memory_reserved() // 2**20, t_allocated=time.time())
        try:  # which NVML index has that PCI bus id
            import pynvml
            pynvml.nvmlInit()
            record["nvml"] = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                bus = pynvml.nvmlDeviceGetPciInfo(h).busId
                record["nvml"].append({"index": i, "bus_id": bus.decode() if isinstance(
                    bus, bytes) else bus})
        except Exception as exc:  # noqa: BLE001
            record["nvml_error"] = repr(exc)
    folder = os.environ.get("GPU_CHECK_RECORDS")
    if folder:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{args.name}.json"), "w") as f:
            json.dump(record, f, indent=1)
    print(f"gpu_check: {json.dumps(record)}", flush=True)
    emulator.run(args, emulator.emulator_mode())
    del keep


if __name__ == "__main__":
    main()
