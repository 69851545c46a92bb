"""The built-in validator ([validate] kind = "mujoco") through the real pipeline: rounds
of tests/fixtures/standin-main.py (clamp grasps of the stand-in box, a rule on seed and
item decides which hold) in a copy of the stand-in checkout, validated one-shot per part
(python -m supervisor.validate.task) while rounds go on. final.npz holds exactly the quota
of grasps that passed with the five columns; the manifest records the validator and
MuJoCo's version; a checkout the validator cannot use is refused at start and by
--dry-run, in one line, exit 2, nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import mujoco
import numpy as np
import pytest
from structlog.testing import capture_logs

from conftest import Layout, run_cli, run_in_process
from validate_grasps import BOX, STANDIN
from supervisor.config.schema import ValidateSettings
from supervisor.validate.builtin import COLUMNS

STANDIN_MAIN = str(Path(__file__).parent / "fixtures" / "standin-main.py")
MAIN = ["{python}", STANDIN_MAIN, "--name", "{name}", "--object_code", "{object_code}",
        "--batch_size", "{batch_size}", "--seed", "{seed}", "--gpu", "{gpu}"]
QUOTA = 3


@pytest.fixture
def checkout(layout: Layout) -> Layout:
    """The layout's BimanGrasp-Optimization/ and data/ are the stand-in checkout's."""
    shutil.copytree(STANDIN.parent, layout.root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("site", "utils", "README.md"))
    return layout


def settings(**changes) -> dict:
    return {"object_code_list": [BOX], "target_count_per_object": QUOTA,
            "round_batch_size": 3, "gpus": [0], "main": {"command": MAIN},
            "validate": {"kind": "mujoco", "workers": 2}, **changes}


def test_final_holds_exactly_the_quota_of_grasps_that_passed_with_their_figures(
        checkout: Layout) -> None:
    with capture_logs() as logs:
        assert run_in_process(checkout.config(**settings())) == 0
    data = checkout.final(BOX)
    assert len(data["energy"]) == QUOTA and data["passed"].all()
    assert set(COLUMNS) <= set(data)
    assert ((data["seed"] + data["item_index"]) % 3 != 0).all()
    assert set(data["fail_reason"].tolist()) == {""}
    np.testing.assert_allclose(data["penetration_m"], 0.0015, atol=1e-6)
    assert (data["max_translation_m"] < 0.001).all() and (data["max_rotation_deg"] < 1).all()
    # the first that passed, in (round_id, item_index) order
    first = data["round_id"] == data["round_id"].min()
    seed = int(data["seed"][first][0])
    assert data["item_index"][first].tolist() == [i for i in range(3) if (seed + i) % 3]
    validated = [e for e in logs if e["event"] == "round_validated"]
    assert validated and all(e["validated"] == 3 for e in validated)
    m = checkout.manifest()
    failed: dict[str, int] = {}
    for rnd in m["objects"][BOX]["rounds"].values():
        for reason, n in (rnd.get("failed_by") or {}).items():
            failed[reason] = failed.get(reason, 0) + n
    seeds = [rnd["seed"] for rnd in m["objects"][BOX]["rounds"].values()]
    assert set(failed) == {"penetration" if s % 2 == 0 else "translation" for s in seeds}
    assert m["identity"]["validate"] == {"kind": "mujoco", **ValidateSettings().protocol()}
    assert m["runs"][-1]["validator"] == {**m["identity"]["validate"],
                                          "mujoco": mujoco.__version__}


def test_a_checkout_the_validator_cannot_use_is_refused_at_start(layout: Layout) -> None:
    """The layout's BimanGrasp-Optimization/ is empty: main.py would run, the validator
    could never validate its grasps."""
    run = run_cli(str(layout.write_config(**settings())))
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and '[validate] kind = "mujoco": ' in run.stderr
    assert "mjcf/left_shadow_hand.xml: no such file" in run.stderr, run.stderr
    assert not layout.experiments.exists()
    shutil.copytree(STANDIN.parent, layout.root, dirs_exist_ok=True)
    path = layout.write_config(**settings(object_code_list=[BOX, "no_mesh"]))
    dry = run_cli(str(path), "--dry-run")
    assert dry.returncode == 2 and dry.stdout == "" and dry.stderr.count("\n") == 1
    assert "no_mesh/coacd/decomposed.obj" in dry.stderr, dry.stderr
    assert not layout.experiments.exists()
