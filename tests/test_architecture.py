"""The layout stays what docs/architecture.md draws: the package's imports, read with ast
(nothing is executed), point one way between the parts the page's table names, never in
a cycle; the state machine imports no anyio; the launchers that run in a round's process
tree use the standard library only; no module is over 300 lines, no function over 60."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "supervisor"
PAGE = ROOT / "docs" / "architecture.md"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
STDLIB_ONLY = ("supervisor.backends.launch", "supervisor.backends.upstream_launcher",
               "supervisor.backends.slurm.task")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[str]:
    """Every module ``path`` imports, at the top or inside a function, absolute."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import of {node.module}"
            found.append(node.module)
            known = modules()
            found += [f"{node.module}.{a.name}" for a in node.names
                      if f"{node.module}.{a.name}" in known]
    return found


def part(module: str) -> str:
    """``supervisor.core.plan`` -> ``core``; ``supervisor.logs`` -> ``logs``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def rules() -> dict[str, set[str]]:
    """The page's table: | `part/` | what lives there | may import |."""
    table: dict[str, set[str]] = {}
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"`[\w.]+/?`", cells[0]):
            name = cells[0].strip("`").rstrip("/").removesuffix(".py")
            table[name] = {c.strip("`").rstrip("/").removesuffix(".py")
                           for c in re.findall(r"`[\w.]+/?`", cells[2])}
    return table


def test_the_page_names_every_part_and_only_those() -> None:
    parts = {part(m) for m in modules()} - {"__init__"}
    assert set(rules()) == parts


def test_imports_between_the_parts_follow_the_page() -> None:
    allowed = rules()
    wrong = []
    for module, path in modules().items():
        mine = part(module)
        for target in imports(path):
            if not target.startswith("supervisor.") or part(target) == mine:
                continue
            if mine != "__init__" and part(target) not in allowed[mine]:
                wrong.append(f"{module} imports {target} ({mine} may import "
                             f"{sorted(allowed[mine]) or 'nothing of ours'})")
    assert wrong == []


def test_no_module_imports_another_that_imports_it_back() -> None:
    known = modules()
    graph = {m: {t for t in imports(p) if t in known and t != m} for m, p in known.items()}
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join(trail + [start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    assert cycles == []


def test_the_state_machine_is_pure_and_the_launchers_need_only_the_standard_library(
) -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for module, path in modules().items():
        top = {t.split(".")[0] for t in imports(path)}
        if part(module) == "core":
            assert top <= stdlib | {"supervisor"}, f"{module} imports {top - stdlib}"
        if module in STDLIB_ONLY:
            assert top <= stdlib, f"{module} imports {top - stdlib}"
        if module == "supervisor.gallery.helper":  # runs in BimanGrasp's Python
            allowed = stdlib | {"numpy", "torch", "utils"}
            assert top <= allowed, f"{module} imports {top - allowed}"


def test_the_gallery_never_imports_torch_into_the_supervisor() -> None:
    for module, path in modules().items():
        if module != "supervisor.gallery.helper":
            assert "torch" not in {t.split(".")[0] for t in imports(path)}, module


def test_the_validator_needs_no_anyio_logging_or_torch() -> None:
    """supervisor.validate runs in one-shot tasks and the validate command: numpy and
    MuJoCo only, whatever the page's table allows."""
    for module, path in modules().items():
        if part(module) == "validate":
            top = {t.split(".")[0] for t in imports(path)}
            assert not top & {"anyio", "structlog", "torch"}, module


def test_nothing_imports_the_commands_but_the_entry_point() -> None:
    for module, path in modules().items():
        if part(module) in ("commands", "__main__"):
            continue
        assert not [t for t in imports(path) if part(t) == "commands"], module


def test_every_part_says_what_lives_there_and_what_it_may_import() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 200 and "import" in doc, f"{init}: a paragraph on the part"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_modules_and_functions_stay_short(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{node.name}: {length} lines"


def test_no_class_is_split_over_files_by_inheritance() -> None:
    """A class whose base is one of ours, in another module: neither file reads alone."""
    ours: dict[str, str] = {}
    trees = {m: ast.parse(p.read_text()) for m, p in modules().items()}
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                ours[node.name] = module
    split = []
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    name = ast.unparse(base).split(".")[-1]
                    if name in ours and ours[name] != module:
                        split.append(f"{module}.{node.name}({name} of {ours[name]})")
    assert split == []


def test_an_installed_package_has_every_part() -> None:
    """pyproject's package list must take the folders along (it named only the top one
    once, and a wheel then held three files)."""
    import sys as _sys

    if _sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    find_packages = pytest.importorskip("setuptools").find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set(find_packages(str(ROOT), **config["packages"]["find"]))
    folders = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    assert found == folders
