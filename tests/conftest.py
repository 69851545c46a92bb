from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "bimangrasp-fork"

EMULATOR_COMMAND = [
    "{python}", "-m", "supervisor.emulator", "--name", "{name}",
    "--object_code", "{object_code}", "--batch_size", "{batch_size}",
    "--num_iterations", "{num_iterations}", "--seed", "{seed}", "--gpu", "{gpu}",
    "--jitter_strength", "0.1",
]
FAST_ENV = {"EMULATOR_STARTUP_S": "0", "EMULATOR_ITER_S": "0.001"}


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """cli.main configures structlog globally; each test starts from the defaults."""
    yield
    import structlog
    structlog.reset_defaults()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(value)


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    lines, tables = [], []
    for key, value in data.items():
        if isinstance(value, dict) and key in (
            "main", "gpu", "retry", "timeouts", "filter", "dedup", "cleanup", "disk", "logs",
            "backend", "view",
        ):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {toml_value(value)}")
    for name, table in tables:
        lines.append(f"\n[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class Layout:
    """A tmp_path laid out like a BimanGrasp checkout with an experiments folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = root / "BimanGrasp-Optimization"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.rounds = root / "data" / "experiments"
        self.experiments = root / "exp"
        self.state = root / "emulator-state"

    def config_data(self, **overrides: Any) -> dict[str, Any]:
        env = dict(FAST_ENV, EMULATOR_STATE_DIR=str(self.state))
        env.update(overrides.pop("env", {}))
        data: dict[str, Any] = {
            "exp_name": "t",
            "experiments_dir": "exp",
            "object_code_list": ["obj_a", "obj_b", "obj_c"],
            "target_count_per_object": 10,
            "round_batch_size": 4,
            "num_iterations": 5,
            "seed_base": 1000,
            "gpus": [0, 1],
            "main": {"command": EMULATOR_COMMAND, "cwd": "BimanGrasp-Optimization",
                     "env": env},
            "gpu": {"probe": "static", "poll_interval_s": 0.05},
            "timeouts": {"grace_s": 2.0},
            "disk": {"min_free_gib": 0.01},
            "logs": {"progress_interval_s": 0.0},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return data

    def write_config(self, name: str = "config.toml", **overrides: Any) -> Path:
        return write_toml(self.root / name, self.config_data(**overrides))

    def config(self, **overrides: Any):
        from supervisor.config.load import load_config
        return load_config(self.write_config(**overrides))

    def manifest(self, exp_name: str = "t") -> dict[str, Any]:
        return json.loads((self.experiments / exp_name / "manifest.json").read_text())

    def final(self, code: str, exp_name: str = "t") -> dict:
        from supervisor.dataset import final as dataset
        return dataset.load(self.experiments / exp_name / "final" / code / "final.npz")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path)


def run_in_process(config, probe=None, timeout_s: float = 120.0) -> int:
    """Run the supervisor in this process (no signal handling) under a time limit."""
    import anyio

    from supervisor.run.start import open_supervisor

    if probe is None:
        from supervisor.gpus.fake import FakeProbe
        probe = FakeProbe({g: 80_000 for g in config.gpus})

    async def main() -> int:
        with anyio.fail_after(timeout_s):
            with open_supervisor(config, probe, handle_signals=False) as sup:
                code = await sup.run()
            # The snapshot on disk is the whole state: the cached encoding missed nothing,
            # and replaying snapshot + journal gives the same state again.
            from supervisor.storage import manifest as mf, store
            if sup.merger.write_error is None:
                written = json.loads((config.exp_dir / "manifest.json").read_text())
                fresh = mf.to_json(sup.state)
                for data in (written, fresh):
                    data.pop("updated_at")
                assert written == fresh
                replayed = mf.to_json(store.load_state(config))
                replayed.pop("updated_at")
                assert replayed == fresh
            return code

    return anyio.run(main)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    # "python" in a shell line means this interpreter, as in an activated venv.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def run_cli(*args: str, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args], cwd=cwd, env=cli_env(),
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def json_lines(text: str) -> Iterator[dict[str, Any]]:
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def live_processes() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every live process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            yield int(entry.name), cmd


def live_emulators(exp_name: str) -> list[int]:
    """Pids of emulator processes, not zombies, running rounds of ``exp_name``."""
    pids = []
    for pid, cmd in live_processes():
        if b"supervisor.emulator" in cmd and any(
            part.startswith(f"{exp_name}__".encode()) for part in cmd
        ):
            pids.append(pid)
    return pids


@contextlib.contextmanager
def full_disk(fails: Callable[[int, int], bool]) -> Iterator[list[int]]:
    """final.npz writes fail with ENOSPC where ``fails(call number, rows)`` says so; yields
    the rows of every write tried."""
    import errno

    from supervisor.dataset import final

    original, calls = final.write, []

    def write(path: Path, columns: Any) -> str:
        calls.append(len(columns["energy"]))
        if fails(len(calls), calls[-1]):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return original(path, columns)

    final.write = write
    try:
        yield calls
    finally:
        final.write = original
