"""The package's layers hold (issue 19): each stage imports only from the stages below it, as
pyproject.toml's import-linter contracts say; no import cycle anywhere; no module grows past
400 lines; every subpackage says what it does and what it may import."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "acnet_convert"
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    root = tmp_path_factory.mktemp("layers")
    shutil.copytree(PACKAGE, root / "acnet_convert", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("fold/fusion.py", "from acnet_convert.graph import ir", "The fold is numpy only"),
    ("read/source.py", "from acnet_convert.out import staging", "Stages are layered"),
    ("write/onnx/ops/_common.py", "from acnet_convert.write.onnx import writer", "Op handlers depend on their builder"),
    ("write/pir.py", "from acnet_convert.write.onnx import builder", "The three writers do not know each other"),
    ("graph/ir.py", "import paddle", "The graph is pure Python"),
    ("cli/output.py", "import onnxruntime", "The command process never imports Paddle"),
    ("supervise/limits.py", "from acnet_convert.commands import fuse", "The command process never imports Paddle"),
    # indirectly: common/quiet.py imports Paddle (in a function), so the command process may not import it
    ("cli/endings.py", "from acnet_convert.common import quiet", "The command process never imports Paddle"),
    ("worker/jobs.py", "from acnet_convert.cli import output", "Stages are layered"),
])
def test_an_upward_import_breaks_a_contract(package_copy: Path, module: str, line: str, broken: str) -> None:
    target = package_copy / "acnet_convert" / module
    original = target.read_text()
    target.write_text(original + f"\n{line}  # deliberately against the layers\n")
    try:
        result = _lint(package_copy)
    finally:
        target.write_text(original)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout.split("Broken contracts")[-1]


def _imports(path: Path, package: str) -> set[str]:
    """The package modules `path` imports (absolute imports only: the package uses no others)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith(package))
    return found


def _cycles(root: Path, package: str) -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph under `root`."""
    modules = {}
    for path in (root / package).rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    edges = {m: {i for i in _imports(p, package) if i in modules and i != m} for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the package is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycle_anywhere() -> None:
    assert _cycles(ROOT, "acnet_convert") == []


def test_a_cycle_is_found(package_copy: Path) -> None:
    target = package_copy / "acnet_convert" / "write" / "legacy" / "builder.py"
    original = target.read_text()
    target.write_text(original + "\nfrom acnet_convert.write.legacy import writer  # a cycle on purpose\n")
    try:
        assert ["acnet_convert.write.legacy.builder", "acnet_convert.write.legacy.ops",
                "acnet_convert.write.legacy.writer"] in _cycles(package_copy, "acnet_convert")
    finally:
        target.write_text(original)


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 400} == {}


def test_every_subpackage_says_what_it_does() -> None:
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(ROOT)} has no docstring saying what the stage does"
