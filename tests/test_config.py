from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import EMULATOR_COMMAND, Layout, write_toml
from supervisor.commands import cli
from supervisor.config.toml import ConfigError
from supervisor.config.load import load_config, parse_config


def test_valid_config_resolves_paths_against_its_folder(layout: Layout) -> None:
    config = layout.config()
    assert config.exp_dir == layout.root / "exp" / "t"
    assert config.main.cwd == layout.cwd
    assert config.main.output_dir.resolve() == layout.rounds
    assert config.object_codes == ("obj_a", "obj_b", "obj_c")
    assert config.gpus == (0, 1)
    assert config.retry.max_attempts == 3 and config.merge_stride == "auto"


def test_object_list_from_txt_with_comments(layout: Layout) -> None:
    (layout.root / "objs.txt").write_text("# header\nobj_x\n\n  obj_y  # trailing\nobj_z\n")
    data = layout.config_data()
    del data["object_code_list"]
    data["object_code_file"] = "objs.txt"
    config = load_config(write_toml(layout.root / "c.toml", data))
    assert config.object_codes == ("obj_x", "obj_y", "obj_z")


def test_object_list_from_json(layout: Layout) -> None:
    (layout.root / "objs.json").write_text(json.dumps(["j1", "j2"]))
    data = layout.config_data()
    del data["object_code_list"]
    data["object_code_file"] = "objs.json"
    assert load_config(write_toml(layout.root / "c.toml", data)).object_codes == ("j1", "j2")


def test_command_line_overrides(layout: Layout) -> None:
    path = layout.write_config()
    args = cli.run_parser().parse_args([
        str(path), "--exp_name", "other", "--gpus", "0,2,3", "--no-resume",
        "--target_count_per_object", "7", "--object_code_list", "p,q",
    ])
    config = load_config(path, cli.overrides_from(args))
    assert config.exp_name == "other" and config.gpus == (0, 2, 3)
    assert config.resume is False and config.target_count_per_object == 7
    assert config.object_codes == ("p", "q")


BAD_CASES = [
    ("unknown key", {"colour": "red"}, "colour"),
    ("unknown table key", {"gpu": {"probe": "static", "min_free": 3}}, "gpu.min_free"),
    ("wrong type", {"round_batch_size": "many"}, "round_batch_size"),
    ("bool for int", {"target_count_per_object": True}, "target_count_per_object"),
    ("zero count", {"round_batch_size": 0}, "round_batch_size"),
    ("negative count", {"target_count_per_object": -5}, "target_count_per_object"),
    ("zero stride", {"merge_stride": 0}, "merge_stride"),
    ("max_rounds over seed stride", {"max_rounds": 100001}, "max_rounds"),
    ("missing object file", {"object_code_list": None, "object_code_file": "nope.txt"},
     "object_code_file"),
    ("slash in object code", {"object_code_list": ["a/b"]}, "object_code_list"),
    ("dotdot in object code", {"object_code_list": ["..x"]}, "object_code_list"),
    ("whitespace in object code", {"object_code_list": ["a b"]}, "object_code_list"),
    ("duplicate object codes", {"object_code_list": ["a", "b", "a"]}, "object_code_list"),
    ("slash in exp_name", {"exp_name": "x/y"}, "exp_name"),
    ("dotdot in exp_name", {"exp_name": ".."}, "exp_name"),
    ("whitespace in exp_name", {"exp_name": "my run"}, "exp_name"),
    ("double underscore in exp_name", {"exp_name": "a__b"}, "exp_name"),
    ("template without name",
     {"main": {"command": [c for c in EMULATOR_COMMAND if c != "{name}"]}}, "main.command"),
    ("template without seed",
     {"main": {"command": [c for c in EMULATOR_COMMAND if c != "{seed}"]}}, "main.command"),
    ("unknown placeholder", {"main": {"command": ["python", "{name}", "{seed}", "{x}"]}},
     "main.command"),
    ("missing cwd", {"main": {"cwd": "no-such-folder"}}, "main.cwd"),
    ("bad gpus", {"gpus": "some"}, "gpus"),
    ("duplicate gpus", {"gpus": [0, 0]}, "gpus"),
    ("bad cleanup mode", {"cleanup": {"mode": "shred"}}, "cleanup.mode"),
    ("bad filter key", {"filter": {"max_E_foo": 1.0}}, "filter.max_E_foo"),
    ("negative timeout", {"timeouts": {"grace_s": -1}}, "timeouts.grace_s"),
]


@pytest.mark.parametrize("label,change,key", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_config_exits_2_with_one_line_and_writes_nothing(
    layout: Layout, capsys: pytest.CaptureFixture[str], label: str, change: dict, key: str
) -> None:
    data = layout.config_data(**{k: v for k, v in change.items() if v is not None})
    for k, v in change.items():
        if v is None:
            del data[k]
    path = write_toml(layout.root / "bad.toml", data)
    before = sorted(p for p in layout.root.rglob("*"))
    assert cli.main([str(path)]) == 2
    err = capsys.readouterr()
    lines = err.err.strip().splitlines()
    assert len(lines) == 1, err.err
    assert str(path) in lines[0] and key in lines[0] and "expected" in lines[0]
    assert err.out == ""
    assert sorted(p for p in layout.root.rglob("*")) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_filter_threshold_is_a_finite_number(layout: Layout, value: str) -> None:
    """Found by a tester (#25): the message said "a finite number >= -inf", and -inf
    was taken: a threshold that drops every grasp, so no object could ever finish."""
    data = layout.config_data(filter={"max_E_pen": float(value), "max_energy": -2.5})
    path = write_toml(layout.root / "c.toml", data)
    assert f"max_E_pen = {value}\n" in path.read_text()  # TOML's own spelling
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"filter.max_E_pen = {value}: expected a finite number (leave max_E_pen out " \
           f"for no threshold)" in str(info.value)
    data["filter"] = {"max_energy": -2.5, "max_E_pen": 0}  # any finite number, as before
    assert load_config(write_toml(path, data)).filter == {"energy": -2.5, "E_pen": 0.0}
    data["filter"], data["timeouts"] = {}, {"grace_s": float("nan")}
    with pytest.raises(ConfigError, match=r"timeouts.grace_s = nan: expected a finite "
                                          r"number >= 0$"):
        load_config(write_toml(path, data))


def test_config_error_names_file_key_value_and_expectation(layout: Layout) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(layout.write_config(round_batch_size=0))
    message = str(info.value)
    assert message.startswith(str(layout.root / "config.toml"))
    assert "round_batch_size = 0" in message and "expected an integer >= 1" in message


def test_bad_override_is_one_line_exit_2(layout: Layout, capsys) -> None:
    path = layout.write_config()
    assert cli.main([str(path), "--target_count_per_object", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "with --target_count_per_object on the command line: " \
        "target_count_per_object = 0" in err[0], err
    assert cli.main([str(path), "--round_batch_size", "lots"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # A bad key in the file is the file's, whatever else the command line set.
    bad = layout.write_config(round_batch_size=0)
    assert cli.main([str(bad), "--target_count_per_object", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "command line" not in err[0] and "round_batch_size = 0" in err[0]


def test_missing_and_invalid_toml(tmp_path: Path, capsys) -> None:
    assert cli.main([str(tmp_path / "none.toml")]) == 2
    assert "none.toml" in capsys.readouterr().err
    bad = tmp_path / "broken.toml"
    bad.write_text("exp_name = \n")
    assert cli.main([str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "valid TOML" in err[0]


def test_gpus_all_without_nvml_fails_clearly(layout: Layout, capsys, monkeypatch) -> None:
    from supervisor.gpus.nvml import NvmlProbe
    from supervisor.gpus.probe import ProbeError

    def no_nvml() -> None:
        raise ProbeError("NVML did not start (no driver)")

    monkeypatch.setattr(NvmlProbe, "__init__", lambda self: no_nvml())
    path = layout.write_config(gpus="all", gpu={"probe": "auto"})
    assert cli.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert 'gpus = "all" needs NVML' in err and not (layout.root / "exp").exists()


@pytest.mark.parametrize("gpus", [[0, 1], "all"])
def test_probe_nvml_without_nvml_names_the_probe(layout: Layout, capsys, monkeypatch,
                                                 gpus) -> None:
    """Found by a tester (#25): with a list of GPUs, the error talked of gpus = "all"."""
    from supervisor.gpus.nvml import NvmlProbe
    from supervisor.gpus.probe import ProbeError

    def no_nvml() -> None:
        raise ProbeError("NVML did not start (no driver)")

    monkeypatch.setattr(NvmlProbe, "__init__", lambda self: no_nvml())
    path = layout.write_config(gpus=gpus, gpu={"probe": "nvml"})
    assert cli.main([str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and '[gpu] probe = "nvml" needs NVML' in err[0], err
    assert 'probe = "auto"' in err[0] and 'gpus = "all" needs' not in err[0]
    assert ('"static"' in err[0]) == (gpus != "all")  # static needs a list of GPUs
    assert not (layout.root / "exp").exists()


def test_unwritable_experiments_folder_is_one_line(layout: Layout, capsys) -> None:
    blocker = layout.root / "exp"
    blocker.write_text("a file where the experiments folder should be")
    assert cli.main([str(layout.write_config())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot start" in err[0] and "exp" in err[0]


def test_backend_ray_without_ray_exits_2_with_the_install_command(
        layout: Layout, capsys, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args, **kwargs):  # as on a machine without the extra
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    path = layout.write_config(gpus="all", backend={"kind": "ray"})
    for args in ([str(path)], [str(path), "--dry-run"]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install -e '.[ray]'" in err[0], err
    assert not (layout.root / "exp").exists()


def test_backend_ray_with_no_cluster_there_exits_2_at_once(layout: Layout, capsys,
                                                           monkeypatch) -> None:
    """Ray itself would retry such an address for ever."""
    import socket

    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    for address, named in ((f"127.0.0.1:{port}", ""), ("auto", "from RAY_ADDRESS"),
                           ("nowhere", 'expected "auto" or "HOST:PORT"')):
        path = layout.write_config(gpus="all", backend={"kind": "ray", "address": address})
        assert cli.main([str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f'address = "{address}"' in err[0] and named in err[0], err
        assert "ray start --head" in err[0] or named
    assert not (layout.root / "exp").exists()


def test_backend_keys_are_checked(layout: Layout, capsys) -> None:
    for backend, gpus, expected in (({"kind": "k8s"}, "all", "'local' or 'ray' or 'slurm'"),
                                    ({"kind": "slurm"}, [0, 1], '"all" with [backend] kind = "slurm"'),
                                    ({"kind": "slurm", "sbatch_args": "--x"}, "all", "a list"),
                                    ({"kind": "slurm", "mode": "job"}, "all", "'steps'"),
                                    ({"kind": "ray", "address": ""}, "all", "non-empty"),
                                    ({"kind": "ray"}, [0, 1], '"all" with [backend]')):
        path = layout.write_config(gpus=gpus, backend=backend)
        assert cli.main([str(path)]) == 2
        err = capsys.readouterr().err
        assert expected in err, err


def test_the_local_backend_never_imports_ray(layout: Layout) -> None:
    import subprocess
    import sys

    from conftest import cli_env
    path = layout.write_config()
    code = ("import sys; from supervisor.commands import cli; code = cli.main([sys.argv[1]]); "
            "assert 'ray' not in sys.modules, 'ray imported'; sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=cli_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_example_config_documents_every_key() -> None:
    import dataclasses

    from conftest import ROOT
    import supervisor.config.schema as cfg
    from supervisor.config.schema import FILTER_KEYS
    from supervisor.config.load import TOP_KEYS

    text = (ROOT / "config.example.toml").read_text()
    for key in TOP_KEYS:
        if key not in ("main", "gpu", "retry", "timeouts", "filter", "dedup", "cleanup", "disk",
                       "logs", "backend", "view", "validate"):
            assert re.search(rf"^(# )?{key} =|\({key} = ", text, re.M), key
    tables = {"gpu": "GpuSettings", "retry": "RetrySettings", "timeouts": "TimeoutSettings",
              "cleanup": "CleanupSettings", "disk": "DiskSettings", "logs": "LogSettings",
              "dedup": "DedupSettings", "backend": "BackendSettings", "view": "ViewSettings",
              "validate": "ValidateSettings"}
    for table, cls in tables.items():
        section = text.split(f"\n[{table}]\n", 1)[1].split("\n[", 1)[0]
        for f in dataclasses.fields(getattr(cfg, cls)):
            assert re.search(rf"\n(# )?{f.name} =", section), f"[{table}] {f.name}"
    for key in FILTER_KEYS:
        assert f"max_{key}" in text
    main = text.split("\n[main]\n", 1)[1].split("\n[", 1)[0]
    for key in ("command", "cwd", "output_dir", "threads", "env"):
        assert f"\n{key} =" in main, key


@pytest.mark.parametrize("value,codes", [
    ('["a","b"]', ["a", "b"]), ("['a', 'b']", ["a", "b"]), ("a, b", ["a", "b"]),
    ("a", ["a"]),
])
def test_object_code_list_on_the_command_line_takes_toml_lists_and_commas(
        layout, value: str, codes: list[str]) -> None:
    """Found by a new user: '["a","b"]' silently made objects named '["a' and '"b"]'."""
    from supervisor.commands.cli import run_parser
    from supervisor.commands.args import overrides_from

    args = run_parser().parse_args([str(layout.write_config()), "--object_code_list", value])
    assert overrides_from(args)["object_code_list"] == codes


@pytest.mark.parametrize("value", ['["a","b"', '"a","b"', "[1, 2]", "a]", "a,,b", ",a", "{a}"])
def test_object_code_list_with_stray_brackets_or_quotes_is_refused_in_one_line(
        layout, value: str) -> None:
    from conftest import run_cli

    proc = run_cli(str(layout.write_config()), "--object_code_list", value, "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "a,b,c or a TOML list such as '[\"a\", \"b\"]'" in proc.stderr


def test_help_says_the_list_forms() -> None:
    from supervisor.commands.cli import run_parser

    text = run_parser().format_help()
    assert "a,b,c or a TOML list" in " ".join(text.split())


def test_a_duplicated_code_names_where_both_are(layout, tmp_path: Path) -> None:
    """It said `object_code_file = 'a1'`, a file name that does not exist."""
    with pytest.raises(ConfigError) as inline:
        layout.config(object_code_list=["a1", "b", "a1"])
    assert 'object_code_list[2] = "a1"' in str(inline.value)
    assert "already object_code_list[0]" in str(inline.value)
    (layout.root / "objects.txt").write_text("a1\n# comment\nb\na1\n")
    data = layout.config_data(object_code_file="objects.txt")
    del data["object_code_list"]
    with pytest.raises(ConfigError) as listed:
        parse_config(data, layout.root / "c.toml")
    text = str(listed.value)
    assert f'object_code_file = "{layout.root / "objects.txt"}"' in text
    assert '"a1" is on line 1 and line 4' in text


def test_refusals_spell_values_as_toml_does(layout) -> None:
    with pytest.raises(ConfigError) as exc:
        layout.config(gpus=[True, 1])
    assert "gpus = [true, 1]" in str(exc.value) and "True" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        layout.config(exp_name=False)
    assert "exp_name = false" in str(exc.value)
