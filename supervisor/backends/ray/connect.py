"""Joining a Ray cluster: Ray imported only here (and only with ``[backend] kind =
"ray"``), its messages to the driver sent to stderr, away from the JSON events."""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Callable

from supervisor.backends.ray.cluster import RayCluster
from supervisor.gpus.probe import Probe

INSTALL = "pip install -e '.[ray]'"


class RayMissing(RuntimeError):
    """Ray is not installed where the supervisor runs."""


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayMissing(f'[backend] kind = "ray" needs Ray ({exc}): run `{INSTALL}` in the '
                         "supervisor's folder, on the head and on every node") from None
    return ray


def connect(address: str, *, probe_factory: Callable[[], Probe] | None = None,
            namespace: str | None = None) -> RayCluster:
    """Join the cluster at ``address`` ("auto", "HOST:PORT", "ray://..."). For a loopback
    test cluster, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` must be set in the environment of
    every process involved (a driver and cluster that disagree hang)."""
    ray = _ray()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _ray_messages_to_stderr()
    if not ray.is_initialized():
        main = threading.current_thread() is threading.main_thread()
        sigterm = signal.getsignal(signal.SIGTERM) if main else None
        ray.init(address=address, namespace=namespace, log_to_driver=False,
                 logging_level=logging.WARNING)
        if main:  # ray.init replaces it with sys.exit: the first SIGTERM must only drain
            signal.signal(signal.SIGTERM, sigterm)
    return RayCluster(ray, probe_factory)


def _ray_messages_to_stderr() -> None:
    """Ray prints what the cluster reports to this driver ("(raylet) A worker died...") on
    stdout, where the supervisor's JSON events go (one foreign line stops `jq`): send it to
    stderr. Private API, hence the care: without it, nothing changes."""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "to_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.to_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr
