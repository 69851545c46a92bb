"""Parts 1-3 of the GPU check: NvmlProbe, per-process memory and its delay, utilisation
sampling with supervisor.gpus.sampler.Sampler. Writes JSON to OUT_DIR (argv[1])."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from supervisor.gpus import sampler as sampler_mod, samples  # noqa: E402
from supervisor.gpus.fake import FakeProbe  # noqa: E402
from supervisor.gpus.nvml import NvmlProbe  # noqa: E402
from supervisor.gpus.probe import Reading  # noqa: E402

OUT = Path(sys.argv[1])
CHILD = str(Path(__file__).with_name("gpu_child.py"))
report: dict = {}


def dump() -> None:
    (OUT / "probe_check.json").write_text(json.dumps(report, indent=1, default=str))


def reading_dict(r: Reading) -> dict:
    return {"free_mib": r.free_mib, "total_mib": r.total_mib, "used_mib": r.used_mib,
            "util_percent": r.util_percent, "processes": dict(r.processes)}


def part1(probe: NvmlProbe) -> None:
    import pynvml as n
    idx = probe.gpu_indices()
    info = {"gpu_indices": idx, "driver": n.nvmlSystemGetDriverVersion(),
            "nvml_version": n.nvmlSystemGetNVMLVersion(),
            "cuda_driver_version": n.nvmlSystemGetCudaDriverVersion_v2(), "gpus": []}
    for i in idx:
        h = n.nvmlDeviceGetHandleByIndex(i)
        t0 = time.perf_counter()
        r = probe.read(i)
        dt = time.perf_counter() - t0
        info["gpus"].append({"index": i, "name": n.nvmlDeviceGetName(h),
                             "bus_id": n.nvmlDeviceGetPciInfo(h).busId,
                             "read": reading_dict(r), "read_ms": round(dt * 1000, 2)})
    # how long one read takes (what the dispatcher and sampler pay)
    t0 = time.perf_counter()
    for _ in range(50):
        probe.read(idx[0])
    info["read_ms_mean_of_50"] = round((time.perf_counter() - t0) / 50 * 1000, 3)
    report["part1"] = info
    print("PART1", json.dumps(info, default=str), flush=True)


def part2(probe: NvmlProbe, mib: int = 2048) -> None:
    """A child takes `mib` with torch; when does NVML show its pid, with how much?"""
    events: dict[str, float] = {}
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, CHILD, "alloc", str(mib), "6"],
                            stdout=subprocess.PIPE, text=True)

    def reader() -> None:
        for line in proc.stdout:
            try:
                e = json.loads(line)
                events[e["event"]] = e["t"]
                events.setdefault("child_pid", e["pid"])
                if "reserved_mib" in e:
                    events["reserved_mib"] = e["reserved_mib"]
            except ValueError:
                pass

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    first_seen = full_seen = None
    trace = []
    base_free = probe.read(0).free_mib
    while proc.poll() is None and time.time() - t0 < 60:
        r = probe.read(0)
        now = time.time()
        mine = r.processes.get(proc.pid)
        trace.append([round(now - t0, 3), r.free_mib, dict(r.processes)])
        if mine is not None and first_seen is None:
            first_seen = (round(now - t0, 3), mine)
        if mine is not None and mine >= mib and full_seen is None:
            full_seen = (round(now - t0, 3), mine, r.free_mib)
        if "allocated" in events and full_seen and now - events["allocated"] > 1:
            break
        time.sleep(0.05)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        smi = repr(exc)
    last = probe.read(0)
    proc.wait(timeout=30)
    th.join(timeout=5)
    after = probe.read(0)
    rel = {k: round(v - t0, 3) for k, v in events.items() if k not in ("child_pid", "reserved_mib")}
    info = {
        "popen_pid": proc.pid, "child_own_pid": events.get("child_pid"),
        "child_events_s_after_popen": rel, "torch_reserved_mib": events.get("reserved_mib"),
        "first_seen_in_nvml": first_seen, "seen_with_full_alloc": full_seen,
        "seen_after_allocated_s": (round(full_seen[0] - rel["allocated"], 3)
                                   if full_seen and "allocated" in rel else None),
        "seen_after_cuda_ready_s": (round(first_seen[0] - rel["cuda_ready"], 3)
                                    if first_seen and "cuda_ready" in rel else None),
        "free_before_mib": base_free, "last_reading_while_held": reading_dict(last),
        "free_after_exit_mib": after.free_mib, "processes_after_exit": dict(after.processes),
        "nvidia_smi_compute_apps": smi.strip(), "returncode": proc.returncode,
        "trace_first_and_around": trace[:3] + [x for x in trace if x[2]][:5],
        "polls": len(trace),
    }
    report["part2"] = info
    print("PART2", json.dumps({k: v for k, v in info.items()
                              if k != "trace_first_and_around"}, default=str), flush=True)


async def part3(probe: NvmlProbe) -> None:
    """Sampler at 0.5 s for ~12 s; a matmul load from ~3 s for 5 s; direct reads at 0.25 s."""
    exp = OUT / "samples_exp"
    exp.mkdir(exist_ok=True)
    load: dict = {}
    direct = []
    t0 = time.time()

    def rounds() -> dict:
        return {load["proc"].pid: "load"} if "proc" in load else {}

    sampler = sampler_mod.Sampler(exp, probe, gpus=lambda: probe.gpu_indices(), rounds=rounds,
                              interval_s=0.5, timeout_s=2.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(sampler.run)
        end = t0 + 13
        while time.time() < end:
            if "proc" not in load and time.time() - t0 > 2:
                load["proc"] = subprocess.Popen([sys.executable, CHILD, "load", "5"],
                                                stdout=subprocess.PIPE, text=True)
                load["t"] = time.time() - t0
            r = await anyio.to_thread.run_sync(probe.read, 0)
            direct.append([round(time.time() - t0, 2), r.util_percent, r.used_mib,
                           dict(r.processes)])
            await anyio.sleep(0.25)
        tg.cancel_scope.cancel()
    out, _ = load["proc"].communicate(timeout=60)
    child = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    s = samples.load(samples.samples_path(exp))
    g = s.gpus.get(0, {})
    recs = samples.read_records(samples.samples_path(exp))
    info = {
        "load_popen_s": round(load["t"], 2),
        "load_child": [{**e, "t": round(e["t"] - t0, 2)} for e in child],
        "direct_util": [[t, u, used] for t, u, used, _ in direct],
        "direct_processes_max": max((max(p.values(), default=0) for *_, p in direct), default=0),
        "sampler_t": [round(float(x) - t0, 2) for x in g.get("t", [])],
        "sampler_util": [None if x != x else int(x) for x in g.get("util_percent", [])],
        "sampler_used_mib": [int(x) for x in g.get("used_mib", [])],
        "sampler_round_peak_mib": s.round_peak_mib,
        "sampler_records": len(recs),
        "records_round_mib": [int(x) for x in recs["round_mib"]],
        "status_latest_and_mean": samples.latest_and_mean(exp),
        "rounds_jsonl": (exp / samples.ROUNDS_NAME).read_text()
        if (exp / samples.ROUNDS_NAME).exists() else None,
    }
    report["part3"] = info
    print("PART3", json.dumps(info, default=str), flush=True)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if os.environ.get("GPU_CHECK_FAKE") == "1":  # plumbing test on a machine without a GPU
        probe = FakeProbe({0: 80_000})
        probe.gpu_indices = lambda: [0]
    else:
        probe = NvmlProbe()
    for name, fn in (("part1", lambda: part1(probe)), ("part2", lambda: part2(probe)),
                     ("part3", lambda: anyio.run(part3, probe))):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - report, go on with the next part
            import traceback
            report[name + "_error"] = traceback.format_exc()
            print(f"{name} FAILED: {exc!r}", flush=True)
        dump()


if __name__ == "__main__":
    main()
