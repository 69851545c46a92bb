"""The README and the docs pages stay true: short README, every page linked and standing
alone, nothing pointing outside the repository, every `python -m supervisor ...` command
line they show runs on the demo, every bench command's flags exist, the README's
quick-start config loads."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, cli_env, run_cli

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
TEXTS = [README, *PAGES]
PAGE_NAMES = ("configuration", "operating", "gpus", "many-servers", "reliability", "quality",
              "report", "emulator", "benchmarks", "architecture", "main-py")


def test_the_readme_is_short_and_links_every_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert {p.stem for p in PAGES} >= set(PAGE_NAMES)
    for name in PAGE_NAMES:
        assert f"(docs/{name}.md)" in text, name


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: p.name)
def test_links_stay_inside_the_repository(path: Path) -> None:
    text = path.read_text()
    assert "../shared" not in text and "shared/docs" not in text
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name}: {target}"
    if path.parent == DOCS:
        assert text.startswith("# "), "a page starts with its title"


def command_lines() -> list[tuple[str, str]]:
    """Every `python -m supervisor ...` the texts show, in code blocks or inline."""
    found = []
    for path in TEXTS:
        text = path.read_text()
        blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
        inline = re.findall(r"`(python -m supervisor [^`]+)`", text)
        for line in [*(l for b in blocks for l in b.splitlines()), *inline]:
            line = line.split("|")[0].split("  #")[0].strip()
            if line.startswith("python -m supervisor ") and "..." not in line:
                found.append((path.name, line))
    return found


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("docs-demo")
    text = (ROOT / "config.example.toml").read_text()
    (root / "config.example.toml").write_text(
        text.replace('EMULATOR_ITER_S = "0.01"', 'EMULATOR_ITER_S = "0.002"'))
    shutil.copytree(ROOT / "demo", root / "demo",
                    ignore=shutil.ignore_patterns("data", "experiments"))
    assert run_cli("config.example.toml", cwd=root).returncode == 0
    return root


def runnable(line: str, demo: Path) -> list[str]:
    """The line with the demo's files in place of the page's examples."""
    line = re.sub(r"\[(--[a-z]+(?: [^\]\s]+)?)\]", r"\1", line)  # [--json] -> --json
    line = re.sub(r" \[[A-Z]+ \.\.\.\]", "", line)  # [PATH ...]
    final = demo / "demo/experiments/demo/final"
    swaps = {"config.toml": "config.example.toml", "DIR": str(demo / "out"),
             "npy/": str(demo / "npy"), "PATH": str(final),
             "/data/grasps/bottles/final": str(final), "report.html": str(demo / "r.html")}
    return [swaps.get(word, word) for word in shlex.split(line)]


def test_every_supervisor_command_line_of_the_docs_runs_on_the_demo(demo: Path) -> None:
    lines = command_lines()
    commands = {line.split()[3] for _, line in lines}
    assert {"status", "report", "export", "recover", "dataset-info",
            "config.toml"} <= commands  # the extraction finds them
    for page, line in lines:
        argv = runnable(line, demo)
        proc = subprocess.run([sys.executable, *argv[1:]], cwd=demo, env=cli_env(),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (page, line, proc.stderr[-1500:])


def test_every_bench_command_of_the_docs_has_its_script_and_flags() -> None:
    for path in TEXTS:
        for line in re.findall(r"`(python bench/[^`]+)`", path.read_text()):
            script, *flags = shlex.split(line)[1:]
            assert (ROOT / script).is_file(), (path.name, line)
            options = [f for f in flags if f.startswith("--")]
            if options:
                proc = subprocess.run([sys.executable, str(ROOT / script), "--help"],
                                      env=cli_env(), capture_output=True, text=True,
                                      timeout=60)
                assert proc.returncode == 0 and all(o in proc.stdout for o in options), line


def test_the_ray_start_lines_use_flags_ray_has() -> None:
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    if ray is None:
        pytest.skip("the ray extra is not installed")
    text = (DOCS / "many-servers.md").read_text()
    flags = set(re.findall(r"(--[a-z-]+)", " ".join(
        line for line in text.splitlines() if "ray start" in line)))
    help_text = subprocess.run([ray, "start", "--help"], capture_output=True, text=True,
                               timeout=120).stdout
    assert flags and all(f in help_text for f in flags), flags


def test_the_readme_quick_start_config_loads(tmp_path: Path) -> None:
    from supervisor.config.load import parse_config
    from supervisor.config.load import tomllib

    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.S).group(1)
    data = tomllib.loads(block)
    (tmp_path / "objects.txt").write_text("Curver_Storage_Bin_Black_Small\n")
    data["main"]["cwd"] = str(tmp_path)
    data["experiments_dir"] = str(tmp_path / "grasps")
    config = parse_config(data, tmp_path / "config.toml")
    assert config.round_batch_size == 1024 and "--object_code" in config.main.command


def test_the_configuration_page_lists_every_key() -> None:
    from dataclasses import fields

    from supervisor.config.load import TOP_KEYS
    from supervisor.config.schema import (
        FILTER_KEYS, SECTIONS, DedupSettings, MainSettings, ValidateSettings, ViewSettings,
    )

    text = (DOCS / "configuration.md").read_text()
    tables = {**SECTIONS, "dedup": DedupSettings, "main": MainSettings, "view": ViewSettings,
              "validate": ValidateSettings}
    keys = [f"`{k}`" for k in TOP_KEYS if k not in tables and k != "filter"]
    keys += [f"`[{t}] {f.name}`" for t, cls in tables.items() for f in fields(cls)]
    keys += [f"max_{k}" for k in FILTER_KEYS if k in ("energy", "E_joints")]
    missing = [k for k in keys if k not in text]
    assert missing == []


def test_every_log_event_is_on_the_operating_page() -> None:
    import ast

    text = (DOCS / "operating.md").read_text()
    named = set()
    for path in (ROOT / "supervisor").rglob("*.py"):
        if path.parent.name == "config":
            continue  # Reader.error(key, ...) is not a log event
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args and \
                    isinstance(node.args[0], ast.Constant) and \
                    isinstance(node.args[0].value, str):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("Log", "info", "warning", "error", "exception"):
                    named.add(node.args[0].value)
    events = {n for n in named if re.fullmatch(r"[a-z]+(_[a-z]+)+", n)}
    assert len(events) > 30 and [e for e in sorted(events) if f"`{e}`" not in text] == []
