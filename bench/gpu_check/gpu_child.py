"""Helper child for probe_check.py: 'alloc MIB HOLD_S' or 'load SECONDS'.

Prints one JSON line per milestone with time.time(), so the parent can time NVML."""

import json
import os
import sys
import time


def say(**kw):
    print(json.dumps({"t": time.time(), "pid": os.getpid(), **kw}), flush=True)


def main():
    mode = sys.argv[1]
    say(event="started")
    import torch
    say(event="torch_imported")
    torch.cuda.init()
    torch.cuda.synchronize()
    say(event="cuda_ready", device=torch.cuda.get_device_name(0))
    if mode == "alloc":
        mib, hold = int(sys.argv[2]), float(sys.argv[3])
        x = torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda")
        x.fill_(7)
        torch.cuda.synchronize()
        say(event="allocated", mib=mib, reserved_mib=torch.cuda.memory_reserved() // 2**20)
        time.sleep(hold)
        say(event="done")
    elif mode == "load":
        seconds = float(sys.argv[2])
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        say(event="load_start")
        end, n = time.time() + seconds, 0
        while time.time() < end:
            for _ in range(20):
                c = a @ b
            torch.cuda.synchronize()
            n += 20
        say(event="load_end", matmuls=n, tflops=round(n * 2 * 8192**3 / seconds / 1e12, 1))
        del c


if __name__ == "__main__":
    main()
