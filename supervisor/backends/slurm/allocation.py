"""The allocation a supervisor runs inside (``mode = "steps"``): its nodes and how many
rounds each can hold at once (its GPUs, or shards, over what one step asks for), read
from ``scontrol show job -d $SLURM_JOB_ID``. Parsing is pure; Slurm's compressed host
lists (``n[0-3,7],gpu-a[01-02]``) are expanded here."""

from __future__ import annotations

import re

_NODES_LINE = re.compile(r"^\s*Nodes=(\S+)\s.*?\bGRES=(\S*)", re.M)
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def hostnames(text: str) -> list[str]:
    """``n[0-2],x`` -> ``n0 n1 n2 x`` (one bracket group per name, as Slurm names nodes)."""
    names: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", text):
        m = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", part)
        if not m:
            names.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for item in ranges.split(","):
            r = _RANGE.match(item)
            if not r:
                raise ValueError(f"host list {text!r}")
            low, high = r.group(1), r.group(2) or r.group(1)
            width = len(low) if low.startswith("0") else 0
            for i in range(int(low), int(high) + 1):
                names.append(f"{prefix}{i:0{width}d}{suffix}")
    return names


def gres_count(gres: str, name: str) -> int:
    """How many of ``name`` (gpu, shard...) a GRES string holds: ``gpu:4(IDX:0-3)``,
    ``gpu:a100:2(IDX:0-1),shard:8``."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres):
        fields = re.sub(r"\(.*\)", "", item).split(":")
        if fields[0] == name and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def per_step(gres: str) -> tuple[str, int]:
    """What one step asks for: ``gpu:1`` -> (gpu, 1); ``gpu:a100:2`` -> (gpu, 2)."""
    fields = gres.split(":") if gres else ["gpu"]
    count = int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return fields[0], max(1, count)


def places(scontrol_text: str, gres: str) -> dict[str, int]:
    """Node -> rounds it can hold at once in this allocation (nodes without any: left
    out, such as one that failed under ``--no-kill``)."""
    name, each = per_step(gres)
    out: dict[str, int] = {}
    for nodes, held in _NODES_LINE.findall(scontrol_text):
        count = gres_count(held, name) // each
        for node in hostnames(nodes):
            if count:
                out[node] = out.get(node, 0) + count
    return out
