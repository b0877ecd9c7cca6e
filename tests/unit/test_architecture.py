"""The architecture as checks: layers and purity (import-linter), module size, unique module names.

Each test kills a way the tree could drift from docs/architecture.md: an upward
import, core reaching for I/O, a module grown past ~500 lines, two modules with
one name in different packages (which makes tracebacks and `grep` ambiguous).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "eventlog", "adapters", "tools")
MAX_LINES = 500
#: Outside libraries core may import (the rest of core's imports are its own or the standard library).
CORE_LIBRARIES = {"attrs", "orjson", "transitions"}
#: Standard-library modules that would give core I/O, a clock, threads or unseeded randomness.
CORE_FORBIDDEN_STDLIB = {
    "os", "io", "socket", "select", "selectors", "time", "datetime", "random", "secrets", "threading",
    "multiprocessing", "concurrent", "asyncio", "subprocess", "sqlite3", "pathlib", "shutil", "tempfile",
    "urllib", "http", "logging", "signal",
}  # fmt: skip


def _modules(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env_python = sys.executable
    return subprocess.run(
        ["bash", str(tree / "tools" / "lint_imports.sh")],
        capture_output=True,
        text=True,
        env={"PYTHON": env_python, "PATH": "/usr/bin:/bin"},
        cwd=tree,
    )


def _copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_import_contracts_hold() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("eventlog/check.py", "from natrelay.adapters import node", "Layers"),
        ("core/jitter.py", "import time", "core is pure"),
        ("adapters/sim/run.py", "from natrelay.adapters.mesh import intake", "independent"),
        ("eventlog/follow.py", "from natrelay.eventlog.log import EventLog", "cycles"),
    ],
)
def test_a_broken_contract_fails_the_check(tmp_path: Path, module: str, line: str, contract: str) -> None:
    tree = _copy_tree(tmp_path)
    target = tree / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    broken = [row for row in result.stdout.splitlines() if row.rstrip().endswith("BROKEN")]
    assert any(contract in row for row in broken), result.stdout


def test_no_module_is_over_the_size_limit() -> None:
    too_long = {
        str(p.relative_to(ROOT)): n
        for p in _modules(*PACKAGES, "tests")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not too_long, f"split by purpose (limit {MAX_LINES} lines): {too_long}"


def test_no_two_modules_share_a_name() -> None:
    seen: dict[str, list[str]] = {}
    for path in _modules(*PACKAGES):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        seen.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {name: where for name, where in seen.items() if len(where) > 1}


def test_core_imports_only_itself_the_standard_library_and_its_three_libraries() -> None:
    offenders: list[str] = []
    for path in _modules("core"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in ("natrelay", "__future__") and not name.startswith(
                    ("natrelay.eventlog", "natrelay.adapters", "natrelay.tools")
                ):
                    continue
                allowed = top in CORE_LIBRARIES or (
                    top in sys.stdlib_module_names and top not in CORE_FORBIDDEN_STDLIB
                )
                if not allowed:
                    offenders.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offenders
