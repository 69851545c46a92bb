"""Short summary of a run.sh output folder: summarize.py OUT_DIR."""

import json
import sys
from pathlib import Path

OUT = Path(sys.argv[1])


def load(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


for tag in ("head", "tree"):
    d = OUT / tag
    if not d.exists():
        continue
    print(f"==== {tag}")
    pt = d / "pytest.txt"
    if pt.exists():
        lines = pt.read_text().strip().splitlines()
        print("pytest:", [x for x in lines if "real_nvml" in x][:2], lines[-1:])
    pc = load(d / "probe_check.json") or {}
    for k in [k for k in pc if k.endswith("_error")]:
        print(k, pc[k].strip().splitlines()[-1])
    p1 = pc.get("part1")
    if p1:
        print("driver", p1["driver"], "cuda", p1["cuda_driver_version"], "indices",
              p1["gpu_indices"], "read_ms", p1["read_ms_mean_of_50"])
        for g in p1["gpus"]:
            print("  gpu", g["index"], g["name"], g["bus_id"], g["read"])
    p2 = pc.get("part2")
    if p2:
        print("per-process: popen pid", p2["popen_pid"], "child's own pid",
              p2["child_own_pid"], "torch reserved", p2["torch_reserved_mib"])
        print("  child events (s after Popen):", p2["child_events_s_after_popen"])
        print("  first seen in NVML (s, MiB):", p2["first_seen_in_nvml"],
              "with full alloc (s, MiB, free):", p2["seen_with_full_alloc"],
              "after 'allocated':", p2["seen_after_allocated_s"], "s; after cuda_ready:",
              p2["seen_after_cuda_ready_s"], "s")
        print("  free before/after:", p2["free_before_mib"], p2["free_after_exit_mib"],
              "processes after exit:", p2["processes_after_exit"], "smi:",
              p2["nvidia_smi_compute_apps"])
    p3 = pc.get("part3")
    if p3:
        print("util: load child", [(e["event"], e["t"], e.get("tflops")) for e in
                                   p3["load_child"]])
        print("  sampler t  :", p3["sampler_t"])
        print("  sampler util:", p3["sampler_util"])
        print("  sampler used:", p3["sampler_used_mib"])
        print("  round_peak_mib:", p3["sampler_round_peak_mib"], "records",
              p3["sampler_records"], "status:", p3["status_latest_and_mean"])
        print("  direct util:", [u for _, u, _ in p3["direct_util"]])
    for e in load(d / "experiments.json") or []:
        if "skipped" in e:
            print("exp", e["name"], "SKIPPED", e["skipped"])
            continue
        print(f"exp {e['name']}: exit {e['exit_code']} in {e['wall_s']} s; events",
              e["event_counts"])
        waits = [x.get("short") for x in e["notable_events"] if x.get("event") == "gpu_wait"]
        print("  gpu_wait:", waits)
        print("  rounds in flight: max", e.get("max_in_flight"), "at each start",
              e.get("in_flight_at_each_start"))
        print("  status --json gpus:", e.get("status_json_gpus"))
        warn = [(x.get("event"), x.get("message") or x.get("reason") or x.get("error"))
                for x in e["notable_events"] if x.get("level") in ("warning", "error")]
        print("  warnings/errors:", warn)
        for n, r in e["fake_main_records"].items():
            print("  rec", n[-2:], r.get("env_seen"), "gpu", r.get("gpu_arg"),
                  r.get("device_name"), "count", r.get("device_count"), "pci",
                  r.get("torch_pci"), "nvml", r.get("nvml"), "reserved", r.get("reserved_mib"))
        g = e["manifest_gpus"] or {}
        print("  manifest footprint_mib:", {k: v.get("footprint_mib") for k, v in g.items()}
              if isinstance(g, dict) else g)
        print("  samples:", e["samples"])
        print("  status rc", e["status_rc"], "|", " | ".join(
            x for x in e["status_out"].splitlines()[:5] if x.strip()))
