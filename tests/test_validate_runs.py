"""The built-in validator ([validate] kind = "mujoco") and whole runs: a checkout the
validator cannot use is refused at start and by --dry-run, in one line, exit 2, nothing
written."""

from __future__ import annotations

import shutil
from pathlib import Path


from conftest import Layout, run_cli
from validate_grasps import BOX, STANDIN

STANDIN_MAIN = str(Path(__file__).parent / "fixtures" / "standin-main.py")
MAIN = ["{python}", STANDIN_MAIN, "--name", "{name}", "--object_code", "{object_code}",
        "--batch_size", "{batch_size}", "--seed", "{seed}", "--gpu", "{gpu}"]
QUOTA = 3


def settings(**changes) -> dict:
    return {"object_code_list": [BOX], "target_count_per_object": QUOTA,
            "round_batch_size": 3, "gpus": [0], "main": {"command": MAIN},
            "validate": {"kind": "mujoco", "workers": 2}, **changes}


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
