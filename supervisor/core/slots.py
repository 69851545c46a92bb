"""A GPU's key in the state, the pool, the journal and the manifest.

On one server a GPU is its NVML index (an ``int``), as it always was. On a Ray cluster GPU 0
exists on every server, so a GPU is ``"HOST/NODE/gpuN"`` (a ``str``): HOST the node's IP
address, NODE the first 8 characters of Ray's node id (two nodes can share a host), N the
physical GPU id that goes to ``--gpu`` and ``CUDA_VISIBLE_DEVICES`` on that node. Logs show
``gpu`` = N and ``node`` = ``HOST/NODE`` beside it (``fields``). Pure; imports nothing.
"""

from __future__ import annotations

from typing import Any, Union

GpuKey = Union[int, str]
_SEP = "/gpu"


def make(node: str, device: int) -> str:
    return f"{node}{_SEP}{device}"


def parse(text: Any) -> GpuKey:
    """A key read back from JSON (where dict keys are strings)."""
    if isinstance(text, int):
        return text
    text = str(text)
    return int(text) if text.lstrip("-").isdigit() else text


def node(key: GpuKey) -> str | None:
    return None if isinstance(key, int) else key.rpartition(_SEP)[0]


def device(key: GpuKey) -> int:
    """The physical GPU id on its machine (``--gpu``, ``CUDA_VISIBLE_DEVICES``)."""
    if isinstance(key, int):
        return key
    tail = key.rpartition(_SEP)[2]
    return int(tail) if tail.isdigit() else -1


def fields(key: GpuKey | None) -> dict[str, Any]:
    """What a log event says of a GPU: ``gpu`` and, on a cluster, ``node``."""
    if key is None or isinstance(key, int):
        return {"gpu": key}
    return {"gpu": device(key), "node": node(key)}


def label(key: GpuKey | None) -> str:
    """``GPU 3``, or ``10.0.0.2/1a2b3c4d GPU 1`` on a cluster."""
    if key is None or isinstance(key, int):
        return f"GPU {'?' if key is None else key}"
    return f"{node(key)} GPU {device(key)}"


def order(key: GpuKey) -> tuple[str, int]:
    """Sort key: by node, then GPU number (ints and strings never compare)."""
    return (node(key) or "", device(key))


def file_name(key: GpuKey) -> str:
    """A per-GPU log's file name: ``gpu_3.log``, ``gpu_10.0.0.2_1a2b3c4d_1.log``."""
    if isinstance(key, int):
        return f"gpu_{key}.log"
    return f"gpu_{(node(key) or '').replace('/', '_')}_{device(key)}.log"
