"""Part 4 of the GPU check: whole supervisor runs (`python -m supervisor cfg.toml`) with
[gpu] probe = "nvml" on the real card, a round = fake_main.py (torch allocation + the
emulator). Writes configs, logs, status outputs and a summary JSON under OUT_DIR.

usage: experiments.py OUT_DIR [--dry]   (--dry: probe = "static", no torch, for a CPU box)
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
OUT = Path(sys.argv[1]).resolve()
DRY = "--dry" in sys.argv
WORK = Path(os.environ.get("GPU_CHECK_WORK", "/tmp/gpu_check_work"))
FAKE_MAIN = Path(__file__).resolve().with_name("fake_main.py")
BATCH = 16


def free_mib() -> int:
    if DRY:
        return 80_000
    from supervisor.gpus.nvml import NvmlProbe
    return NvmlProbe().read(0).free_mib


def toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def write_cfg(name: str, rounds: int, gpu: dict, gpus="all") -> Path:
    exp_root = WORK / "experiments"
    top = {
        "exp_name": name, "experiments_dir": str(exp_root),
        "object_code_list": ["gpu_check_obj"],
        "target_count_per_object": BATCH * rounds, "round_batch_size": BATCH,
        "num_iterations": 150, "max_rounds": 10, "keep_intermediate": True, "gpus": gpus,
    }
    main = {
        "command": ["{python}", str(FAKE_MAIN), "--name", "{name}", "--object_code",
                    "{object_code}", "--batch_size", "{batch_size}", "--num_iterations",
                    "{num_iterations}", "--seed", "{seed}", "--gpu", "{gpu}",
                    "--jitter_strength", "0.1"],
        "cwd": str(WORK / "BimanGrasp-Optimization"), "output_dir": "../data/experiments",
        "threads": 2,
        "env": {"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0.04",
                "GPU_CHECK_RECORDS": str(WORK / "records" / name),
                "GPU_CHECK_ALLOC_MIB": "1024",
                **({"GPU_CHECK_NO_TORCH": "1"} if DRY else {})},
    }
    gpu = {"probe": "static" if DRY else "nvml", "poll_interval_s": 1.0,
           "sample_interval_s": 1.0, "nvml_timeout_s": 10.0, **gpu}
    if DRY and gpus == "all":
        top["gpus"] = [0]
    sections = {
        "main": main, "gpu": gpu,
        "timeouts": {"stall_timeout_s": 120, "round_timeout_s": 180, "grace_s": 5},
        "disk": {"min_free_gib": 0.0}, "logs": {"progress_interval_s": 2.0},
        "dedup": {"enabled": False},
    }
    lines = [f"{k} = {toml(v)}" for k, v in top.items()]
    for sec, kv in sections.items():
        lines.append(f"\n[{sec}]")
        lines += [f"{k} = {toml(v)}" for k, v in kv.items()]
    path = OUT / "cfg" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def run_experiment(name: str, cfg: Path, timeout: float) -> dict:
    log = OUT / f"{name}.log"
    t0 = time.time()
    try:
        with open(log, "w") as f:
            p = subprocess.run([sys.executable, "-m", "supervisor", str(cfg),
                                "--log-format", "json"], stdout=f, stderr=subprocess.STDOUT,
                               timeout=timeout, cwd=ROOT)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = round(time.time() - t0, 1)
    status = subprocess.run([sys.executable, "-m", "supervisor", "status", str(cfg)],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    (OUT / f"{name}.status.txt").write_text(status.stdout + status.stderr)
    sj = subprocess.run([sys.executable, "-m", "supervisor", "status", str(cfg), "--json"],
                        capture_output=True, text=True, cwd=ROOT, timeout=60)
    try:
        status_json_gpus = json.loads(sj.stdout).get("gpus")
    except ValueError:
        status_json_gpus = {"error": f"rc {sj.returncode}: {sj.stdout[-300:]} {sj.stderr[-500:]}"}
    events, other = [], []
    for line in log.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            other.append(line)
    kinds = Counter(e.get("event") for e in events)
    t_run = next((e.get("timestamp") for e in events if e.get("event") == "run_started"), None)
    keep = ("gpu_wait", "round_started", "round_finished", "round_failed", "round_retry",
            "gpu_lost", "run_finished", "run_stopped", "gpu_sample_failed",
            "gpu_samples_off", "gpu_samples_not_written", "object_done")
    notable = [e for e in events if e.get("event") in keep
               or e.get("level") in ("warning", "error", "critical")]
    # rounds in flight at once, from the log's order of round_started / round ended
    live, max_live, live_at_start = set(), 0, []
    for e in events:
        ev_, rn = e.get("event"), e.get("round")
        if ev_ == "round_started":
            live.add(rn)
            live_at_start.append(len(live))
            max_live = max(max_live, len(live))
        elif ev_ in ("round_finished", "round_failed", "round_retry", "round_lost",
                     "round_stopped", "round_interrupted"):
            live.discard(rn)
    exp_dir = WORK / "experiments" / name
    manifest = {}
    try:
        manifest = json.loads((exp_dir / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        manifest = {"error": repr(exc)}
    records = {}
    for p in sorted((WORK / "records" / name).glob("*.json")):
        records[p.stem] = json.loads(p.read_text())
    configs = {}
    for p in sorted((WORK / "data" / "experiments").glob(f"{name}__*/results/config.txt")):
        configs[p.parent.parent.name] = p.read_text()
    peaks = None
    try:
        from supervisor.gpus import samples
        s = samples.load(samples.samples_path(exp_dir))
        peaks = {"round_peak_mib": s.round_peak_mib,
                 "util": {g: [None if x != x else int(x) for x in a["util_percent"]]
                          for g, a in s.gpus.items()},
                 "used_mib": {g: [int(x) for x in a["used_mib"]] for g, a in s.gpus.items()}}
    except Exception as exc:  # noqa: BLE001
        peaks = {"error": repr(exc)}
    rounds = []
    for obj in (manifest.get("objects") or {}).values() if isinstance(
            manifest.get("objects"), dict) else manifest.get("objects") or []:
        for r in (obj.get("rounds") or {}).values() if isinstance(obj.get("rounds"), dict) \
                else obj.get("rounds") or []:
            rounds.append(r)
    return {
        "name": name, "exit_code": rc, "wall_s": wall, "event_counts": dict(kinds),
        "non_json_lines": other[:20], "notable_events": notable,
        "manifest_gpus": manifest.get("gpus"), "manifest_rounds": rounds,
        "fake_main_records": records, "round_config_txt": configs, "samples": peaks,
        "status_rc": status.returncode, "status_out": status.stdout[-3000:],
        "status_err": status.stderr[-2000:], "t_run_started": t_run,
        "status_json_gpus": status_json_gpus, "max_in_flight": max_live,
        "in_flight_at_each_start": live_at_start,
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if WORK.exists():
        shutil.rmtree(WORK)
    (WORK / "BimanGrasp-Optimization").mkdir(parents=True)
    results = []
    deadline = time.time() + float(os.environ.get("GPU_CHECK_EXP_BUDGET_S", "200"))
    free0 = free_mib()
    plan = [
        # "auto", tight: the 2nd round fits while NVML does not show the 1st yet, the
        # 3rd must wait (gpu_wait) until one ends: footprint learned ~1.5 GiB
        ("auto_tight", 3, {"max_rounds_per_gpu": "auto", "min_free_mib": free0 - 2500,
                           "round_memory_mib": 2000}, [0]),
        # "auto", plenty of memory: 3 rounds at once on the one card
        ("auto_plain", 3, {"max_rounds_per_gpu": "auto", "min_free_mib": 8000,
                           "round_memory_mib": 6000}, "all"),
        # the GPU trap, one round at a time: 2 rounds in a row on GPU 0
        ("trap", 2, {"max_rounds_per_gpu": 1, "min_free_mib": 4000,
                     "round_memory_mib": 2000}, "all"),
    ]
    for name, rounds, gpu, gpus in plan:
        left = deadline - time.time()
        if left < 30:
            results.append({"name": name, "skipped": f"{left:.0f} s of budget left"})
            continue
        cfg = write_cfg(name, rounds, gpu, gpus)
        res = run_experiment(name, cfg, min(90.0, left))
        res["free0_mib"] = free0
        res["gpu_settings"] = gpu
        results.append(res)
        (OUT / "experiments.json").write_text(json.dumps(results, indent=1, default=str))
        brief = {k: res[k] for k in ("name", "exit_code", "wall_s", "event_counts")}
        print("EXP", json.dumps(brief), flush=True)
        for e in res["notable_events"]:
            ev = e.get("event")
            if ev in ("gpu_wait", "round_started", "round_finished") or e.get("level") in (
                    "warning", "error"):
                short = {k: e.get(k) for k in ("timestamp", "event", "round", "short",
                                               "duration_s", "reason", "message", "error")
                         if e.get(k) is not None}
                print("   ", json.dumps(short, default=str)[:400], flush=True)
        for n, r in res["fake_main_records"].items():
            print("    REC", n[-2:], json.dumps({k: r.get(k) for k in (
                "env_seen", "gpu_arg", "device_name", "device_count", "torch_pci", "nvml",
                "reserved_mib")}), flush=True)
        gpus_ = res["manifest_gpus"] or {}
        print("    MANIFEST footprint_mib:", {g: v.get("footprint_mib") for g, v in
                                             gpus_.items()} if isinstance(gpus_, dict)
              else gpus_, flush=True)
        print("    STATUS --json gpus:", json.dumps(res["status_json_gpus"]), flush=True)
        print("    IN FLIGHT: max", res["max_in_flight"], "at each round_started",
              res["in_flight_at_each_start"], flush=True)
        print("    ROUNDS gpu:", [(r.get("name", "")[-2:], r.get("gpu"), r.get("status"))
                                   for r in res["manifest_rounds"]], flush=True)
        print("    SAMPLES round_peak_mib:", json.dumps((res["samples"] or {}).get(
            "round_peak_mib")), flush=True)
        print("    STATUS rc=%s: %s" % (res["status_rc"], " | ".join(
            l for l in res["status_out"].splitlines()[:5] if l.strip())), flush=True)
    # a copy of each experiment's folder (small: manifest, journal, samples, logs)
    if (WORK / "experiments").exists():
        shutil.copytree(WORK / "experiments", OUT / "experiments", dirs_exist_ok=True)


if __name__ == "__main__":
    main()
