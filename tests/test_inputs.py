"""Small input defects: each gets one clear error at config time, or a fix."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, Layout, cli_env, run_cli, run_in_process
from supervisor.config.toml import ConfigError
from supervisor.config.load import load_config


def test_object_file_with_a_bom_reads_the_first_code_as_written(layout: Layout) -> None:
    from conftest import write_toml

    (layout.root / "objects.txt").write_bytes("\ufeffobj_a\nobj_b\n".encode("utf-8"))
    data = layout.config_data()
    del data["object_code_list"]
    data["object_code_file"] = "objects.txt"
    config = load_config(write_toml(layout.root / "config.toml", data))
    assert config.object_codes == ("obj_a", "obj_b")


def test_an_object_code_too_long_for_a_file_name_is_refused(layout: Layout) -> None:
    with pytest.raises(ConfigError, match="255 bytes"):
        layout.config(object_code_list=["x" * 250])


def test_a_seed_base_past_numpy_seeds_is_refused(layout: Layout) -> None:
    with pytest.raises(ConfigError, match="seed_base"):
        layout.config(seed_base=9223372036854775000)


def test_recover_of_a_mistyped_exp_name_creates_nothing(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    proc = run_cli("recover", str(path), "--exp_name", "typo")
    assert proc.returncode == 2 and "nothing to recover" in proc.stderr
    assert not (layout.experiments / "typo" / "manifest.json").exists()


def test_an_empty_experiments_dir_is_refused(layout: Layout) -> None:
    path = layout.write_config()
    proc = run_cli(str(path), "--experiments_dir", "")
    assert proc.returncode == 2 and "empty" in proc.stderr


def test_an_extra_key_in_only_some_rounds_is_kept_with_nan(layout: Layout) -> None:
    # extra_key adds E_surprise to the last grasp only: such a round is invalid. A newer
    # main.py's key in every grasp of some rounds is kept, NaN in the others.
    from supervisor.dataset.final import Accumulator
    from supervisor.emulator.grasps import make_grasps
    from supervisor.dataset.results import to_columns, with_provenance

    acc = Accumulator()
    for rid, extra in ((0, False), (1, True)):
        grasps = make_grasps("o", rid, 3, 5)
        if extra:
            for g in grasps:
                g["E_wrench"] = 0.5
        items = np.empty(3, dtype=object)
        items[:] = grasps
        acc.add(rid, with_provenance(to_columns(items, 3), rid, rid))
    columns = acc.build()
    assert np.isnan(columns["E_wrench"][:3]).all() and (columns["E_wrench"][3:] == 0.5).all()
    assert acc.partial_keys == {"E_wrench"}


def test_dry_run_never_shows_more_than_the_target(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=5)
    assert run_cli(str(path)).returncode == 0
    proc = run_cli(str(path), "--dry-run")
    assert proc.returncode == 0 and "5/5 collected" in proc.stdout, proc.stdout


def test_ctrl_c_during_imports_prints_no_traceback(layout: Layout) -> None:
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "supervisor", "--help"],
                            cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for line in proc.stderr:  # the CLI's own imports (structlog comes only through it)
        if line.rstrip().endswith(b"structlog"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err and proc.returncode in (0, 130)


def test_files_of_a_run_honour_the_umask(layout: Layout) -> None:
    config = layout.config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_in_process(config) == 0
    from supervisor.storage.fsutil import current_umask

    expected = 0o666 & ~current_umask()
    for path in (config.exp_dir / "manifest.json", config.exp_dir / "final/obj_a/final.npz"):
        assert path.stat().st_mode & 0o777 == expected, path


def test_hints_repeat_the_command_line_overrides(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    proc = run_cli("status", str(path), "--exp_name", "other")
    assert proc.returncode == 2
    assert f"python -m supervisor {path} --exp_name other" in proc.stderr
    assert run_cli(str(path), "--exp_name", "other").returncode == 0
    (layout.experiments / "other" / "manifest.json").write_text("{")
    proc = run_cli(str(path), "--exp_name", "other")
    assert proc.returncode == 2
    assert f"python -m supervisor recover {path} --exp_name other" in proc.stderr


def test_recover_of_a_mistyped_exp_name_writes_nothing_at_all(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli("recover", str(path), "--exp_name", "typo").returncode == 2
    assert not (layout.experiments / "typo").exists()


def test_dry_run_of_a_finished_run_says_there_is_nothing_to_run(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    assert "First rounds: none (nothing left to run)" in run_cli(str(path), "--dry-run").stdout


def test_a_refused_change_names_the_key_as_the_toml_file_does(layout: Layout) -> None:
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4,
                               filter={"max_E_pen": 0.0015})
    assert run_cli(str(path)).returncode == 0
    changed = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4,
                                  filter={"max_E_pen": 0.002})
    proc = run_cli(str(changed))
    assert proc.returncode == 2 and "filter.max_E_pen = 0.002 differs from 0.0015" in proc.stderr
    assert f"{changed}: filter" in proc.stderr  # the file's
    # A value from the command line is said to be (found by a tester: the file was named).
    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4,
                               filter={"max_E_pen": 0.0015})
    proc = run_cli(str(path), "--target_count_per_object", "2")
    assert proc.returncode == 2 and f"{path}, with --target_count_per_object on the " \
        "command line: target_count_per_object = 2 is lower than 4" in proc.stderr
    proc = run_cli(str(path), "--seed_base", "7")
    assert proc.returncode == 2 and "with --seed_base on the command line: seed_base = 7 " \
        "differs from" in proc.stderr


def test_auto_packing_without_memory_figures_runs_one_round_per_gpu() -> None:
    from supervisor.config.schema import GpuSettings
    from supervisor.gpus.pool import GpuPool
    from supervisor.gpus.static import StaticProbe

    pool = GpuPool(StaticProbe([0]), [0], GpuSettings(max_rounds_per_gpu="auto"))
    assert pool.shortage(0, pool.probe.read(0)) is None
    pool.take(0, "r0")
    assert "needs NVML" in pool.shortage(0, pool.probe.read(0))


def test_report_refuses_a_manifest_with_a_malformed_object(layout: Layout) -> None:
    import json

    path = layout.write_config(object_code_list=["obj_a"], target_count_per_object=4)
    assert run_cli(str(path)).returncode == 0
    manifest = layout.experiments / "t" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["objects"]["obj_a"] = None
    manifest.write_text(json.dumps(data))
    proc = run_cli("report", str(path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "obj_a" in proc.stderr
