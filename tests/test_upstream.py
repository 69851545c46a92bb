"""Upstream main.py: the emulator's upstream mode, and the launcher that runs it per object."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, cli_env
from supervisor.emulator import program as emulator
from supervisor.emulator.grasps import make_grasps
from supervisor.dataset import results
from supervisor.backends.upstream_launcher import LAUNCHER_PATH, UsageError, split_argv

CODE = "Curver_Storage_Bin_Black_Small"
SHIM = 'from supervisor.emulator import main\n\nif __name__ == "__main__":\n    main()\n'


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    """BimanGrasp-Optimization/ whose main.py is the emulator in upstream mode."""
    path = tmp_path / "BimanGrasp-Optimization"
    path.mkdir()
    (path / "main.py").write_text(SHIM)
    return path


def upstream_env(**extra: str) -> dict[str, str]:
    env = cli_env()
    env.update({"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0.001",
                "EMULATOR_MODE": "upstream"})
    env.update(extra)
    return env


def flags(name: str = "u1", batch: int = 3, seed: int = 5) -> list[str]:
    return ["--name", name, "--batch_size", str(batch), "--num_iterations", "4",
            "--seed", str(seed), "--gpu", "cpu"]


def launch(cwd: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(LAUNCHER_PATH), *args], cwd=cwd,
                          env=upstream_env(**env), capture_output=True, text=True, timeout=60)


def emulate(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor.emulator", *args], cwd=cwd,
                          env=upstream_env(), capture_output=True, text=True, timeout=60)


def results_dir(cwd: Path, name: str = "u1") -> Path:
    return cwd.parent / "data" / "experiments" / name / "results"


# -- the emulator, upstream mode ----------------------------------------------------------

def test_upstream_defaults_five_objects_batch_32(cwd: Path) -> None:
    proc = emulate(cwd, ["--name", "u1", "--num_iterations", "1", "--gpu", "cpu"])
    assert proc.returncode == 0, proc.stderr
    assert "Objects: 5 objects" in proc.stdout and "Batch size: 32 per object" in proc.stdout
    assert "Total batch: 160" in proc.stdout
    files = {p.name for p in results_dir(cwd).iterdir()}
    assert files == {"config.txt", *(f"{c}.npy" for c in emulator.UPSTREAM_OBJECTS)}
    items = np.load(results_dir(cwd) / f"{CODE}.npy", allow_pickle=True)
    assert len(items) == 32 and "__meta__" not in items[0]
    real = np.load(FIXTURES / "results" / "probe1" / f"{CODE}.npy", allow_pickle=True)
    assert list(items[0]) == [k for k in real[0] if k != "__meta__"]


@pytest.mark.parametrize("extra", [["--jitter_strength", "0.1"], ["--vis"]])
def test_upstream_has_no_fork_flags(cwd: Path, extra: list[str]) -> None:
    proc = emulate(cwd, [*flags(), *extra])
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


# argparse takes --object_code as an abbreviation of --object_code_list: no error, and the
# code is split into characters like any command-line value of that list.
@pytest.mark.parametrize("flag", ["--object_code_list", "--object_code"])
def test_object_code_list_on_the_command_line_is_split_into_characters(cwd: Path,
                                                                       flag: str) -> None:
    (cwd.parent / "data" / "meshdata" / CODE).mkdir(parents=True)
    proc = emulate(cwd, [*flags(), flag, CODE])
    assert proc.returncode == 1
    assert "No mesh found for object C " in proc.stderr
    assert not (cwd.parent / "data" / "experiments").exists()


# -- the launcher, end to end ---------------------------------------------------------------

def test_launcher_runs_exactly_one_object(cwd: Path) -> None:
    (cwd.parent / "data" / "meshdata" / CODE).mkdir(parents=True)  # only X is known
    proc = launch(cwd, ["--object_code", CODE, *flags()])
    assert proc.returncode == 0, proc.stderr
    assert "Objects: 1 objects" in proc.stdout and "Total batch: 3" in proc.stdout
    assert "Experiment completed: u1" in proc.stdout
    assert "optimizing: 100%" in proc.stderr
    assert {p.name for p in results_dir(cwd).iterdir()} == {"config.txt", f"{CODE}.npy"}
    assert f"object_code_list=[{CODE!r}]" in (results_dir(cwd) / "config.txt").read_text()
    items = np.load(results_dir(cwd) / f"{CODE}.npy", allow_pickle=True)
    assert len(items) == 3 and all("__meta__" not in item for item in items)
    columns = results.read_round(results_dir(cwd) / f"{CODE}.npy", 3)  # the merger accepts it
    expected = make_grasps(CODE, 5, 3, 4, meta=False)
    assert columns["energy"].tolist() == [g["energy"] for g in expected]


def test_launcher_with_main_path_and_equals_forms(cwd: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "main.py").write_text(SHIM)
    (cwd / "main.py").unlink()
    proc = launch(cwd, [f"--object_code={CODE}", f"--main={elsewhere / 'main.py'}", *flags()])
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in results_dir(cwd).iterdir()} == {"config.txt", f"{CODE}.npy"}


def test_exit_codes_and_tracebacks_pass_through(cwd: Path) -> None:
    proc = launch(cwd, ["--object_code", CODE, *flags()], EMULATOR_FAULTS="u1=exit:7")
    assert proc.returncode == 7
    proc = launch(cwd, ["--object_code", CODE, *flags()], EMULATOR_FAULTS="u1=crash")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "RuntimeError: emulated crash" in proc.stderr
    proc = launch(cwd, ["--object_code", CODE, *flags(batch=0)])
    assert proc.returncode == 1 and "batch_size must be positive" in proc.stderr


def test_unknown_flags_are_main_pys_argparse_error(cwd: Path) -> None:
    proc = launch(cwd, ["--object_code", CODE, *flags(), "--colour", "red"])
    assert proc.returncode == 2
    assert "main.py: error: unrecognized arguments: --colour red" in proc.stderr
    assert not (cwd.parent / "data").exists()


@pytest.mark.parametrize("args,message", [
    (flags(), "--object_code CODE is required"),
    (["--object_code"], "--object_code needs a value"),
    (["--object_code", CODE, "--object_code", "other", *flags()], "given twice"),
    (["--object_code", CODE, "--object_code_list", "x", *flags()], "conflicts with"),
    (["--object_code", "-x", *flags()], "is not an object code"),
    (["--object_code", CODE, "--main", "nowhere.py", *flags()], "no main.py at"),
])
def test_launcher_usage_errors(cwd: Path, args: list[str], message: str) -> None:
    proc = launch(cwd, args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: upstream_launcher.py --object_code CODE")
    error = proc.stderr.splitlines()[1]
    assert error.startswith("upstream_launcher.py: error: ") and message in error
    assert proc.stdout == "" and not (cwd.parent / "data").exists()


def test_main_py_without_object_code_list_is_an_error(cwd: Path) -> None:
    (cwd / "main.py").write_text("print('ran')\n")
    proc = launch(cwd, ["--object_code", CODE])
    assert proc.returncode == 2 and "ran without parsing --object_code_list" in proc.stderr


def test_main_py_sees_what_python_main_py_would(cwd: Path) -> None:
    (cwd / "helper_module.py").write_text("VALUE = 42\n")
    (cwd / "main.py").write_text(
        "import argparse, json, sys\n"
        "import helper_module\n"  # importable only with main.py's folder on sys.path
        "if __name__ == '__main__':\n"
        "    p = argparse.ArgumentParser()\n"
        "    p.add_argument('--object_code_list', default=['a', 'b'], type=list)\n"
        "    p.add_argument('--name', default='test')\n"
        "    args, rest = p.parse_known_args()\n"
        "    other = argparse.ArgumentParser().parse_args([])\n"
        "    print(json.dumps({'argv': sys.argv, 'file': __file__, 'path0': sys.path[0],\n"
        "                      'codes': args.object_code_list, 'name': args.name,\n"
        "                      'rest': rest, 'other': vars(other),\n"
        "                      'helper': helper_module.VALUE}))\n")
    proc = launch(cwd, ["--name", "n", "--object_code", "X", "--extra"])
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    main_py = str((cwd / "main.py").resolve())
    assert seen == {"argv": [main_py, "--name", "n", "--extra"], "file": main_py,
                    "path0": str(cwd.resolve()), "codes": ["X"], "name": "n",
                    "rest": ["--extra"], "other": {}, "helper": 42}


@pytest.mark.parametrize("argv,expected", [
    (["--object_code", "X"], ("X", "main.py", [])),
    (["--name", "a", "--object_code=X", "--seed", "3"], ("X", "main.py",
                                                         ["--name", "a", "--seed", "3"])),
    (["--main", "/m.py", "--object_code", "X", "--gpu", "1"], ("X", "/m.py", ["--gpu", "1"])),
    (["--object_code", "X", "--", "--object_code", "Y"], ("X", "main.py",
                                                          ["--", "--object_code", "Y"])),
])
def test_split_argv(argv: list[str], expected: tuple) -> None:
    assert split_argv(argv) == expected


@pytest.mark.parametrize("argv", [[], ["--object_code="], ["--object_code", " X"],
                                  ["--object_code", "a/b"], ["--object_code_", "X"]])
def test_split_argv_rejects(argv: list[str]) -> None:
    with pytest.raises(UsageError):
        split_argv(argv)


def test_launcher_is_stdlib_only() -> None:
    code = ("import sys; sys.modules['numpy'] = None; sys.modules['supervisor'] = None\n"
            f"import runpy; runpy.run_path({str(LAUNCHER_PATH)!r}, run_name='probe')\n")
    proc = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_a_run_with_the_launcher_and_upstream_main_py_meets_exact_quotas(tmp_path: Path) -> None:
    """The supervisor drives the public release's main.py through {upstream_launcher}."""
    from conftest import Layout, run_in_process

    layout = Layout(tmp_path)
    (layout.cwd / "main.py").write_text(SHIM)
    command = ["{python}", "{upstream_launcher}", "--object_code", "{object_code}",
               "--name", "{name}", "--seed", "{seed}", "--gpu", "{gpu}",
               "--batch_size", "{batch_size}", "--num_iterations", "{num_iterations}"]
    config = layout.config(main={"command": command}, target_count_per_object=9,
                           env={"EMULATOR_MODE": "upstream"},
                           filter={"max_E_pen": 0.0015})
    assert run_in_process(config) == 0
    fork_layout = Layout(tmp_path / "fork")
    assert run_in_process(fork_layout.config(target_count_per_object=9,
                                             filter={"max_E_pen": 0.0015})) == 0
    for code in ("obj_a", "obj_b", "obj_c"):
        data, fork = layout.final(code), fork_layout.final(code)
        assert len(data["energy"]) == 9
        assert sorted(data) == sorted(fork)  # the same final.npz schema
        assert np.all(data["E_pen"] <= 0.0015)
