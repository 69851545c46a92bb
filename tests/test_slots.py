"""GPU keys: an int on one server, "HOST/NODE/gpuN" on a cluster (supervisor.core.slots)."""

from __future__ import annotations

import io
import json

from hypothesis import given, strategies as st

from supervisor.core import slots
from supervisor.run.live import LiveView, Snapshot
from supervisor.core.records import GpuRecord
from supervisor.commands.report.data import row_label, row_order

nodes = st.from_regex(r"\A(\d{1,3}\.){3}\d{1,3}/[0-9a-f]{8}\Z")


@given(nodes, st.integers(0, 15))
def test_a_cluster_key_round_trips_through_json(node: str, device: int) -> None:
    key = slots.make(node, device)
    back = slots.parse(json.loads(json.dumps({key: 1})).popitem()[0])
    assert back == key and slots.node(back) == node and slots.device(back) == device
    assert slots.fields(key) == {"gpu": device, "node": node}
    rec = GpuRecord.from_json(json.loads(json.dumps(GpuRecord(key, node).to_json())))
    assert rec.gpu == key and rec.node == node


@given(st.integers(0, 64))
def test_a_local_key_stays_what_it_was(gpu: int) -> None:
    assert slots.parse(str(gpu)) == gpu and slots.fields(gpu) == {"gpu": gpu}
    assert slots.label(gpu) == f"GPU {gpu}" and slots.file_name(gpu) == f"gpu_{gpu}.log"


def test_labels_order_and_file_names_tell_nodes_apart() -> None:
    a, b = "10.0.0.2/1a2b3c4d/gpu1", "10.0.0.2/5e6f7a8b/gpu0"
    assert slots.file_name(a) != slots.file_name(b) and "/" not in slots.file_name(a)
    assert sorted([b, a, "10.0.0.2/1a2b3c4d/gpu0"], key=slots.order) == [
        "10.0.0.2/1a2b3c4d/gpu0", a, b]
    assert row_order([row_label(b, None), row_label(a, None)]) == [
        "10.0.0.2/1a2b3c4d GPU 1", "10.0.0.2/5e6f7a8b GPU 0"]
    view = LiveView(lambda: Snapshot("t", False, 1, 0, 0, 10, {a: "", b: "quarantined"}),
                    io.StringIO())
    assert view.render()[1:] == ["  10.0.0.2/1a2b3c4d GPU 1: idle",
                                 "  10.0.0.2/5e6f7a8b GPU 0 (quarantined): idle"]
