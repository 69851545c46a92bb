"""A loopback Ray cluster for tests (ray.cluster_utils.Cluster, logical GPUs).

It binds to 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for every process,
children included: it stays in os.environ while the cluster lives) and is stopped with
cluster.shutdown(): never `ray stop`, never a kill by name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

# Skipped without Ray (pip install -e '.[ray]'), except under CI, which installs it.
needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None and not os.environ.get("CI"),
    reason="ray is not installed: pip install -e '.[ray]'")


@contextlib.contextmanager
def loopback_cluster(head: dict[str, Any], *nodes: dict[str, Any]) -> Iterator[Any]:
    """Yields (cluster, temp folder); ``head`` and ``nodes`` are add_node arguments."""
    saved = dict(os.environ)
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray reads it when imported
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster
    enabled = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # in case ray was imported before
    temp = tempfile.mkdtemp(prefix="rayt")  # short: Ray's socket paths must stay < 108
    # Cluster writes its address to /tmp/ray/ray_current_cluster whatever temp_dir says,
    # and fails where that folder does not exist (a fresh machine).
    shared = Path(tempfile.gettempdir()) / "ray"
    made_shared = not shared.exists()
    shared.mkdir(exist_ok=True)
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "include_dashboard": False, "temp_dir": temp, **head})
        for node in nodes:
            cluster.add_node(**node)
        yield cluster, Path(temp)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = enabled
        os.environ.clear()
        os.environ.update(saved)
        remove_tree(Path(temp))
        if made_shared:
            try:
                shared.rmdir()  # only if it is still empty
            except OSError:
                pass


def remove_tree(path: Path) -> None:
    """Ray's exiting processes may still write their logs for a moment."""
    for _ in range(50):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)
