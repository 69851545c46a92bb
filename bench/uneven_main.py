"""The emulator of main.py with a round length that depends on the seed (bench/ray_backend.py).

Used as ``[main] command = ["{python}", "/abs/bench/uneven_main.py", <the emulator's
argv>]``: the command template can vary per round only through ``{seed}``, so this sets
``EMULATOR_ITER_S`` = ``BENCH_BASE_ITER_S`` (default 0.01) x a factor in [1, 4] drawn from
``random.Random(seed)`` (the same seed, the same length, on any backend), then runs
``supervisor.emulator`` in this process with the argv unchanged.

With ``BENCH_TIMES_DIR`` set it writes ``{name}.{pid}.json`` there: the child's own
wall-clock start (its first statement, after the interpreter's start-up) and end (the
emulator returned; the interpreter's exit follows), for the bench's child-side timings.
"""

import time

T0 = time.time()

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402


def arg(argv: list[str], flag: str, default: str) -> str:
    for i, item in enumerate(argv):
        if item == flag and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return default


def factor(seed: int) -> float:
    return random.Random(seed).uniform(1.0, 4.0)


def main() -> None:
    argv = sys.argv[1:]
    seed = int(arg(argv, "--seed", "1"))
    base = float(os.environ.get("BENCH_BASE_ITER_S", "0.01"))
    os.environ["EMULATOR_ITER_S"] = repr(base * factor(seed))
    from supervisor.emulator import program as emulator
    ok = False
    try:
        emulator.main(argv)
        ok = True
    finally:
        times = os.environ.get("BENCH_TIMES_DIR")
        if times:
            record = {"name": arg(argv, "--name", "?"), "seed": seed, "start": T0,
                      "end": time.time(), "ok": ok, "gpu": arg(argv, "--gpu", "?"),
                      "node": os.environ.get("SLURMD_NODENAME", "local")}
            path = os.path.join(times, f"{record['name']}.{os.getpid()}.json")
            with open(path, "w") as f:
                json.dump(record, f)


if __name__ == "__main__":
    main()
