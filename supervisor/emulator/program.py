"""An emulator of BimanGrasp's main.py, on a CPU: the fork (``--object_code``) or upstream.

It honours docs/main-py.md: same command line, same files in the same places, the same
output on stdout and stderr, the same traps:

- it sets its own CUDA_VISIBLE_DEVICES from ``--gpu`` (the GPU trap) and records in
  ``config.txt`` the device it ended up on;
- it wipes ``logs/`` and ``results/`` of its ``--name`` at start and writes the result file
  only at the very end;
- without ``--jitter_strength`` it crashes at start-up like the fork does;
- an unknown object fails before any folder is created.

Environment variables (never command-line flags: main.py rejects unknown flags):

- ``EMULATOR_MODE``: ``fork`` (default) or ``upstream``. Upstream is the public release:
  no ``--object_code`` nor ``--jitter_strength``, ``--object_code_list`` declared with
  ``type=list`` (a command-line value becomes its characters) and a default list of five
  objects, ``--batch_size`` 32 by default, one ``results/{code}.npy`` per object of the
  list, without ``__meta__``. ``supervisor/backends/upstream_launcher.py`` runs it for one object.
- ``EMULATOR_STARTUP_S`` (default 0.2): seconds of "imports" before any work.
- ``EMULATOR_ITER_S`` (default 0.005): seconds per optimizer iteration;
  ``EMULATOR_OBJECT_COST=SPREAD`` makes it vary per object code, by up to that fraction.
- ``EMULATOR_GPU_DIR``, ``EMULATOR_GPU_CURVE``, ``EMULATOR_GPU_MEMORY_MIB``,
  ``EMULATOR_ROUND_MEMORY_MIB``: rounds share emulated cards (throughput curve, memory,
  torch's out-of-memory error): see ``supervisor.emulator.cards``.
- ``EMULATOR_EXPERIMENTS_BASE``: where ``{name}/`` goes instead of ``../data/experiments``.
- ``EMULATOR_NEAR_DUPLICATES``: ``FRACTION[:NOISE]`` (noise default 0.001): that fraction
  of each result file's grasps are copies, each final pose value moved by at most NOISE
  (uniform), of one of ``ATTRACTOR_COUNT`` grasps fixed per object code (pose and scale,
  the same for every seed): rounds then hold near-duplicates of each other and of
  themselves. Which grasps and which attractors depend on the seed only.
- ``EMULATOR_FAULTS``: ``GLOB=MODE[,MODE...][;GLOB=...]``; GLOB matches ``--name``, the
  n-th MODE applies to the n-th attempt of that name, ``MODE*`` to every later attempt,
  ``A+B`` combines modes. Attempts are counted in ``EMULATOR_STATE_DIR`` (without it,
  every run is attempt 1). Modes: ``ok``, ``exit`` / ``exit:CODE`` (mid-run), ``crash``
  (traceback before saving), ``crash_mid_write`` (half a result file, then dies),
  ``truncated`` (half a result file, exit 0), ``hang`` (stops mid-run, silent),
  ``ignore_sigterm``, ``sigkill`` (killed mid-run, as by the OOM killer), ``nan``, ``inf``,
  ``wrong_length``, ``wrong_type``, ``wrong_dtype``, ``missing_key``, ``extra_key``,
  ``spawn_worker``.
- ``spawn_worker`` models a data-loader worker: before ``Starting optimization...`` the
  emulator starts a grandchild ``python -c ... MAX_S emulator-worker {name}`` in its own
  process group, holding its stdout and stderr like a forked worker does. It sleeps until
  the emulator ends normally (exit, exception, SIGINT), which stops it; when the emulator
  is killed (SIGKILL, SIGTERM) it lives on, re-parented, for ``EMULATOR_WORKER_MAX_S``
  (default 300) seconds, unless someone kills the process group.

Object codes are known when ``../data/meshdata`` (relative to the working directory) has a
folder of that name; without a ``../data/meshdata`` folder every code is known.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
import zlib
from pathlib import Path

import supervisor.emulator.cards as cards
from supervisor.emulator.faults import (
    _mid_run_faults, _save, _spawn_worker, corrupt, fault_modes, next_attempt,
)
from supervisor.emulator.grasps import make_grasps, near_duplicates

MODES = ("fork", "upstream")
UPSTREAM_OBJECTS = (
    "Cole_Hardware_Dishtowel_Multicolors", "Curver_Storage_Bin_Black_Small",
    "Hasbro_Monopoly_Hotels_Game", "Breyer_Horse_Of_The_Year_2015",
    "Schleich_S_Bayala_Unicorn_70432",
)
BAR_REDRAW_S = 0.1  # tqdm's default mininterval
TORCH_WARNING = (
    "/opt/venv/lib/python3.11/site-packages/torch/nn/init.py:114: UserWarning: To copy "
    "construct from a tensor, it is recommended to use sourceTensor.detach().clone() or "
    "sourceTensor.detach().clone().requires_grad_(True), rather than "
    "tensor.new_tensor(sourceTensor).\n  lo = tensor.new_tensor(a, device=\"cpu\").item()\n"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py")
    p.add_argument("--name", type=str, default="test")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--gpu", type=str, default="0")
    p.add_argument("--batch_size", type=int, default=2048)
    p.add_argument("--num_iterations", type=int, default=10000)
    p.add_argument("--object_code", type=str, default=None)
    p.add_argument("--object_code_list", type=list, default=None)
    p.add_argument("--vis", action="store_true")
    p.add_argument("--vis_frame_stride", type=int, default=50)
    p.add_argument("--metrics", action="store_true")
    p.add_argument("--metrics_stride", type=int, default=50)
    p.add_argument("--jitter_strength", type=float, default=None)
    p.add_argument("--distance_lower", type=float, default=None)
    p.add_argument("--distance_upper", type=float, default=None)
    p.add_argument("--num_contacts", type=int, default=None)
    p.add_argument("--init_at_targets", action="store_true")
    return p


def build_upstream_parser() -> argparse.ArgumentParser:
    """The public release's argparse, flag for flag."""
    p = argparse.ArgumentParser(prog="main.py", description="Bimanual Grasp Generation")
    p.add_argument("--name", default="test", type=str, help="Experiment name")
    p.add_argument("--seed", default=1, type=int)
    p.add_argument("--gpu", default="0", type=str)
    p.add_argument("--object_code_list", default=list(UPSTREAM_OBJECTS), type=list,
                   help="List of object codes to process")
    p.add_argument("--batch_size", default=32, type=int, help="Batch size per object")
    p.add_argument("--num_iterations", default=10000, type=int,
                   help="Number of optimization iterations")
    return p


def emulator_mode() -> str:
    mode = os.environ.get("EMULATOR_MODE", "") or "fork"
    if mode not in MODES:
        raise ValueError(f"EMULATOR_MODE={mode!r}: expected one of {', '.join(MODES)}")
    return mode


def _banner(args: argparse.Namespace, codes: list[str]) -> None:
    print("=== Experiment Configuration ===")
    print(f"Name: {args.name}")
    print(f"Objects: {len(codes)} objects")
    print(f"Batch size: {args.batch_size} per object")
    print(f"Total batch: {args.batch_size * len(codes)}")
    print(f"iterations: {args.num_iterations}")
    print("Energy weights: dis=100.0, pen=125.0, vew=0.5")
    print("temperature: 18")
    print("Langevin noise: 0.1")
    print("=" * 45)
    print(f"Starting experiment: {args.name}", flush=True)


def _bar(i: int, total: int, elapsed: float) -> str:
    frac = i / total if total else 1.0
    filled = int(frac * 10)
    bar = "█" * filled + (" " * (10 - filled))
    rate = i / elapsed if elapsed > 0 else 0.0
    eta = (total - i) / rate if rate > 0 else 0.0
    clock = lambda s: f"{int(s) // 60:02d}:{int(s) % 60:02d}"  # noqa: E731
    rate_s = f"{rate:5.2f}it/s" if i else "?it/s"
    eta_s = clock(eta) if i else "?"
    return (f"\roptimizing: {int(frac * 100):3d}%|{bar}| {i}/{total} "
            f"[{clock(elapsed)}<{eta_s}, {rate_s}]")


def _config_line(args: argparse.Namespace, codes: list[str], device: str) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    order = os.environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST")
    physical = visible if device != "cpu" and order == "PCI_BUS_ID" else None
    return (
        f"ExperimentConfig(name={args.name!r}, seed={args.seed}, gpu={args.gpu!r}, "
        f"object_code_list={codes!r}, optimizer=OptimizerConfig(num_iterations="
        f"{args.num_iterations}), initialization=InitializationConfig(jitter_strength="
        f"{getattr(args, 'jitter_strength', None)}), "
        f"model=ModelConfig(batch_size={args.batch_size}), "
        f"emulator=EmulatorInfo(device={device!r}, cuda_visible_devices={visible!r}, "
        f"cuda_device_order={order!r}, physical_gpu={physical!r}, pid={os.getpid()}))"
    )


def _iteration_s(codes: list[str]) -> float:
    """``EMULATOR_ITER_S``, times this object's cost under ``EMULATOR_OBJECT_COST``."""
    iter_s = float(os.environ.get("EMULATOR_ITER_S", "0.005"))
    spread = float(os.environ.get("EMULATOR_OBJECT_COST", "") or 0.0)
    u = zlib.crc32(codes[0].encode()) / 2**32 * 2 - 1  # in [-1, 1), fixed per object
    return iter_s * (1.0 + spread * u)


def _optimize(args: argparse.Namespace, modes: set[str], results: Path, iter_s: float,
              card: cards.Card | None) -> None:
    total, t0, last_draw = args.num_iterations, time.monotonic(), -1.0
    sys.stderr.write(_bar(0, total, 0.0))
    sys.stderr.flush()
    for i in range(1, total + 1):
        if i == max(1, total // 2):
            _mid_run_faults(modes)
        time.sleep(iter_s / (card.speed() if card else 1.0))
        if getattr(args, "vis", False) and i % args.vis_frame_stride == 0:
            frames = results / "frames_0"
            frames.mkdir(exist_ok=True)
            (frames / f"frame_{i:05d}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
        now = time.monotonic()
        if now - last_draw >= BAR_REDRAW_S or i == total:
            sys.stderr.write(_bar(i, total, now - t0))
            sys.stderr.flush()
            last_draw = now
    sys.stderr.write(_bar(total, total, time.monotonic() - t0) + "\n")
    sys.stderr.flush()


def _object_codes(args: argparse.Namespace, upstream: bool) -> list[str]:
    if upstream:
        return list(args.object_code_list)
    return [args.object_code] if args.object_code else ["".join(args.object_code_list or [])]


def _setup_device(gpu: str) -> str:
    if gpu == "cpu":
        return "cpu"
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)  # the GPU trap: main.py's setup_device
    return "cuda:0"


def _prepare_output(args: argparse.Namespace, codes: list[str], device: str) -> Path:
    base = Path(os.environ.get("EMULATOR_EXPERIMENTS_BASE", "../data/experiments"))
    for sub in ("logs", "results"):  # main.py wipes its own output at start
        folder = base / args.name / sub
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    results = base / args.name / "results"
    (results / "config.txt").write_text(_config_line(args, codes, device))
    (base / args.name / "logs" / f"events.out.tfevents.{int(time.time())}.emu.{os.getpid()}.0"
     ).write_bytes(b"\x18\x00\x00\x00\x00\x00\x00\x00brain.Event:2")
    return results


def _save_all(args: argparse.Namespace, codes: list[str], results: Path, modes: set[str],
              upstream: bool) -> None:
    near_dup = near_duplicates(os.environ.get("EMULATOR_NEAR_DUPLICATES", ""))
    for code in codes:
        grasps = make_grasps(code, args.seed, args.batch_size, args.num_iterations,
                             near_dup, meta=not upstream)
        _save(results / f"{code}.npy", corrupt(grasps, modes), modes)
    if getattr(args, "vis", False):
        (results / "optimization_0.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    if getattr(args, "metrics", False):
        (results / "metrics").mkdir(exist_ok=True)
        (results / "metrics" / "metrics.json").write_text("{}")


def run(args: argparse.Namespace, mode: str = "fork") -> None:
    upstream = mode == "upstream"
    attempt = next_attempt(args.name)
    modes = fault_modes(args.name, attempt, os.environ.get("EMULATOR_FAULTS", ""))
    near_duplicates(os.environ.get("EMULATOR_NEAR_DUPLICATES", ""))  # a bad spec fails now
    if "ignore_sigterm" in modes:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(float(os.environ.get("EMULATOR_STARTUP_S", "0.2")))
    sys.stderr.write(TORCH_WARNING)
    sys.stderr.flush()
    device = _setup_device(args.gpu)
    card = cards.attach(args.gpu)  # CUDA is up: the process shows on its card
    if not upstream and args.jitter_strength is None:
        raise TypeError("unsupported operand type(s) for *: 'NoneType' and 'float'")
    if args.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {args.batch_size}")
    codes = _object_codes(args, upstream)
    meshdata = Path("../data/meshdata")
    for code in codes:
        if meshdata.is_dir() and not (meshdata / code).is_dir():
            raise FileNotFoundError(f"No mesh found for object {code} in {meshdata}")
    _banner(args, codes)
    print(f"Using device: {device}")
    print("Setting up models...", flush=True)
    results = _prepare_output(args, codes, device)
    if card:
        card.allocate()
    print("Left hand contact candidates: 140")
    print("Right hand contact candidates: 140")
    print(f"Total batch size: {args.batch_size * len(codes)}")
    if "spawn_worker" in modes:
        _spawn_worker(args.name)
    print("Starting optimization...", flush=True)
    if card:
        card.start_iterating()
    _optimize(args, modes, results, _iteration_s(codes), card)
    if card:
        card.leave()
    if "crash" in modes:
        raise RuntimeError("emulated crash before saving results")
    print("Saving final results...", flush=True)
    _save_all(args, codes, results, modes, upstream)
    print("\n=== Performance Statistics ===")
    print("Memory profiling unavailable (memory_profiler not installed)")
    print(f"Experiment completed: {args.name}", flush=True)


def main(argv: list[str] | None = None) -> None:
    mode = emulator_mode()
    parser = build_upstream_parser() if mode == "upstream" else build_parser()
    run(parser.parse_args(argv), mode)


if __name__ == "__main__":
    main()
