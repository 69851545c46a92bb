"""The merger's decisions, fed outcomes directly (no children)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from structlog.testing import capture_logs

from conftest import Layout
from supervisor import manifest as mf, rounds
from supervisor.dataset import Accumulator
from supervisor.emulator import make_grasps
from supervisor.gpus import FakeProbe, GpuPool
from supervisor.plan import Pick
from supervisor.results import to_columns, with_provenance
from supervisor.supervisor import Supervisor

pytestmark = pytest.mark.anyio


def ok(job: rounds.RoundJob) -> rounds.Outcome:
    items = np.empty(4, dtype=object)
    items[:] = make_grasps("obj_a", job.seed, 4, 5)
    cols = with_provenance(to_columns(items, 4), job.seed, job.round_id)
    return rounds.Outcome(job, rounds.OK, time.time(), time.time(), exit_code=0,
                          produced=4, accepted=4, columns=cols)


async def test_rounds_beyond_the_quota_are_discarded_not_merged(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=5,
                           round_batch_size=4)
    m = mf.Manifest("t", config.identity(), config.snapshot())
    m.objects["obj_a"] = mf.ObjectRecord("obj_a", 0, 5)
    pool = GpuPool(FakeProbe({0: 80_000, 1: 80_000}), [0, 1], config.gpu)
    sup = Supervisor(config, m, {"obj_a": Accumulator()}, pool, handle_signals=False)
    jobs = [sup._start(Pick("obj_a", rid, new=True), rid % 2) for rid in range(4)]
    with capture_logs() as logs:
        for rid in (2, 0):  # completes out of order; round 1 still running
            sup.merger.handle(ok(jobs[rid]))
        assert m.objects["obj_a"].status == mf.ACTIVE  # 8 grasps, but round 1 may change them
        sup.merger.handle(ok(jobs[1]))
        assert m.objects["obj_a"].status == mf.DONE
        sup.merger.handle(ok(jobs[3]))  # started beyond what was needed, finished after done
        await sup.merger.flush(drain=True)
    statuses = {rid: r.status for rid, r in m.objects["obj_a"].rounds.items()}
    assert statuses == {0: mf.MERGED, 1: mf.MERGED, 2: mf.DISCARDED, 3: mf.DISCARDED}
    assert [r.used for r in m.objects["obj_a"].rounds.values()] == [4, 1, 0, 0]
    data = layout.final("obj_a")
    assert data["round_id"].tolist() == [0, 0, 0, 0, 1]
    discarded = [e["round"] for e in logs if e["event"] == "round_discarded"]
    assert discarded == ["t__obj_a__r2", "t__obj_a__r3"]
