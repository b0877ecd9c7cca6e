"""Installs that cannot drift: every import is a declared dependency of the extra that needs it.

Reads every module of the distribution with `ast` (no import runs) and checks,
against pyproject.toml:

- each third-party import names a distribution declared in the base
  dependencies or in an extra, and an optional one in the extra `OPTIONAL`
  assigns it to;
- nothing optional is imported when the command line starts: the modules
  `natrelay` imports at start-up (followed through top-level imports) touch
  only base dependencies, so `natrelay --help` and every verb's --help work on
  a plain install — optional packages are imported inside the function that
  needs them (or by a module only ever imported that way);
- `dev` holds every other extra; nothing imports click (typer vendors it);
- the built wheel holds every module and every data file of the packages.

tools/wheel_check.sh repeats the start-up checks on a real wheel in a fresh
virtual environment.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: The folders the distribution maps to natrelay.* (pyproject's package-dir).
PACKAGE_DIRS = {
    name: ROOT / folder
    for name, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items()
    if name.startswith("natrelay.")
}
#: The extra an optional import belongs to, by its top-level import name.
OPTIONAL = {
    "matplotlib": "sim",
    "psycopg": "postgres",
    "hypothesis": "fuzz",
    "eventsourcing": "bench",
    "pyroute2": "kernel",
}
#: Modules that are an optional extra's own: they may import it at module level (and are imported lazily).
EXTRA_MODULES = {"natrelay.tools.fuzz.machine": "fuzz", "natrelay.tools.fuzz.runner": "fuzz"}
#: Import name -> distribution, where the two differ.
DISTRIBUTION = {"attr": "attrs"}
#: Files in package folders that are scripts of the repository (tools/*.sh), not package data.
NOT_PACKAGE_DATA = re.compile(r"tools/[^/]+\.sh")
#: The tests' own package; helpers beside a test (tests/e2e/mesh.py) are local too.
TEST_LOCAL = {"tests", "conftest"}


@attrs.frozen
class Import:
    module: str  # the importing module, natrelay.x.y
    name: str  # the imported module, fully qualified
    line: int
    lazy: bool  # inside a function: runs only when it is called
    type_only: bool  # under `if TYPE_CHECKING:`: never runs


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return normalize(match.group(0))


@cache
def extras() -> dict[str, set[str]]:
    """Every extra's distributions (self-references such as natrelay[sim] resolved); "base" too."""
    raw = {"base": PYPROJECT["project"]["dependencies"], **PYPROJECT["project"]["optional-dependencies"]}

    def resolve(extra: str) -> set[str]:
        names: set[str] = set()
        for requirement in raw[extra]:
            name = requirement_name(requirement)
            if name == "natrelay":
                inner = re.search(r"\[(.*)\]", requirement)
                assert inner, requirement
                for other in inner.group(1).split(","):
                    names |= resolve(other.strip())
            else:
                names.add(name)
        return names

    return {extra: resolve(extra) for extra in raw}


def module_files() -> Iterator[tuple[str, Path]]:
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join((package, *parts)), path


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool, type_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(module, alias.name, node.lineno, lazy, type_only))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append(Import(module, target, node.lineno, lazy, type_only))
            # `from package import submodule` imports the submodule too
            for alias in node.names:
                found.append(Import(module, f"{target}.{alias.name}", node.lineno, lazy, type_only))
        for child in ast.iter_child_nodes(node):
            visit(
                child,
                lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda),
                type_only or (isinstance(node, ast.If) and _is_type_checking(node) and child in node.body),
            )

    visit(tree, False, False)
    return found


@cache
def all_imports() -> dict[str, list[Import]]:
    return {module: imports_of(module, path) for module, path in module_files()}


def third_party(name: str) -> str | None:
    """The top-level name of a third-party import; None for the standard library and natrelay."""
    top = name.split(".")[0]
    if top in sys.stdlib_module_names or top == "__future__" or top == "natrelay":
        return None
    return top


def distribution(top: str) -> str:
    return normalize(DISTRIBUTION.get(top, top))


def declared_in(dist: str) -> list[str]:
    return [extra for extra, names in extras().items() if dist in names]


def test_every_third_party_import_is_declared_in_its_extra() -> None:
    problems = []
    for module, found in all_imports().items():
        for item in found:
            top = third_party(item.name)
            if top is None or item.type_only:
                continue
            dist = distribution(top)
            where = f"{module}:{item.line} imports {top}"
            if "base" in declared_in(dist):
                if top in OPTIONAL:
                    problems.append(f"{where}: optional ({OPTIONAL[top]}) but declared in the base")
                continue
            if top not in OPTIONAL:
                problems.append(f"{where}: {dist} is declared nowhere (or only in an extra OPTIONAL lacks)")
            elif dist not in extras()[OPTIONAL[top]]:
                problems.append(f"{where}: {dist} is not in the [{OPTIONAL[top]}] extra")
    assert not problems, "\n".join(problems)


def import_time_closure(start: str) -> dict[str, Import]:
    """Every third-party import that runs when `start` is imported, with the import that brings it in."""
    modules = all_imports()
    seen: set[str] = set()
    reached: dict[str, Import] = {}
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        # importing a.b.c runs a/__init__ and a.b/__init__ first
        parents = [module.rsplit(".", depth)[0] for depth in range(1, module.count("."))]
        todo.extend(parent for parent in parents if parent in modules)
        for item in modules.get(module, []):
            if item.lazy or item.type_only:
                continue
            top = third_party(item.name)
            if top is not None:
                reached.setdefault(top, item)
            elif item.name in modules:
                todo.append(item.name)
    return reached


def test_the_command_line_starts_on_base_dependencies_only() -> None:
    base = extras()["base"]
    entry = PYPROJECT["project"]["scripts"]["natrelay"].split(":")[0]
    problems = [
        f"{item.module}:{item.line} imports {top} at import time (needs [{OPTIONAL.get(top, '?')}])"
        for top, item in import_time_closure(entry).items()
        if distribution(top) not in base
    ]
    assert not problems, "\n".join(problems)


def test_only_an_extras_own_modules_need_it_at_import_time() -> None:
    """Every module imports on the base alone, except the few that are an extra's own (`EXTRA_MODULES`).

    Those (tools/fuzz/machine.py is Hypothesis through and through) may import
    their extra at module level, and so anything importing them at module level
    would need it too and fail here: they are imported inside functions only.
    """
    base = extras()["base"]
    problems = []
    for module in all_imports():
        allowed = base | extras()[EXTRA_MODULES[module]] if module in EXTRA_MODULES else base
        for top, item in import_time_closure(module).items():
            if distribution(top) not in allowed:
                problems.append(f"importing {module} runs {item.module}:{item.line}, which imports {top}")
    assert not problems, "\n".join(problems)
    for module, extra in EXTRA_MODULES.items():  # the exception is real, not stale
        assert any(distribution(top) in extras()[extra] for top in import_time_closure(module)), module


def test_the_checks_catch_an_optional_import_at_the_top_of_a_verb(tmp_path: Path) -> None:
    """The analysis itself: matplotlib imported at the top of a module is an import-time dependency."""
    sample = tmp_path / "sample.py"
    sample.write_text("import matplotlib\nimport orjson\ndef later():\n    import hypothesis\n")
    found = imports_of("natrelay.tools.sample", sample)
    assert [(i.name, i.lazy) for i in found] == [
        ("matplotlib", False),
        ("orjson", False),
        ("hypothesis", True),
    ]


def test_dev_holds_every_extra_and_every_extra_has_lower_bounds() -> None:
    every = extras()
    for extra, names in every.items():
        if extra not in ("dev", "base"):
            assert names <= every["dev"], f"dev lacks {names - every['dev']} of [{extra}]"
    requirements = [*PYPROJECT["project"]["dependencies"]]
    for items in PYPROJECT["project"]["optional-dependencies"].values():
        requirements.extend(r for r in items if requirement_name(r) != "natrelay")
    assert all(">=" in r for r in requirements), [r for r in requirements if ">=" not in r]


def test_tests_import_only_what_dev_declares() -> None:
    allowed = extras()["dev"] | extras()["base"]
    problems = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        beside = {sibling.stem for sibling in path.parent.glob("*.py")}
        for item in imports_of("tests.x", path):
            top = third_party(item.name)
            if top is None or top in TEST_LOCAL or top in beside or item.type_only:
                continue
            if distribution(top) not in allowed:
                problems.append(f"{path.relative_to(ROOT)}:{item.line} imports {top}")
    assert not problems, "\n".join(problems)


def test_nothing_imports_click() -> None:
    """typer >= 0.29 vendors click; importing click would need an undeclared distribution."""
    offenders = []
    folders = ("core", "eventlog", "adapters", "tools", "tests")
    for path in sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")):
        for item in imports_of("x.y", path):
            if item.name == "click" or item.name.startswith("click."):
                offenders.append(f"{path.relative_to(ROOT)}:{item.line}")
    assert not offenders, offenders
    assert "click" not in {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}


BLOCK_EXTRAS = """
import runpy, sys
for name in {blocked!r}:
    sys.modules[name] = None  # as if not installed: import fails, find_spec says None
sys.argv = ["natrelay", *sys.argv[1:]]
runpy.run_module("natrelay.tools.cli", run_name="__main__")
"""


def run_without_extras(*args: str) -> subprocess.CompletedProcess[str]:
    code = BLOCK_EXTRAS.format(blocked=set(OPTIONAL))
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


def verbs() -> list[str]:
    from natrelay.tools.cli import app

    return sorted(
        command.name or command.callback.__name__ for command in app.registered_commands if command.callback
    )


def test_every_verb_helps_without_the_extras() -> None:
    names = verbs()
    assert {"simulate", "fuzz", "bench", "status", "plot"} <= set(names)
    top = run_without_extras("--help")
    assert top.returncode == 0, top.stderr
    for name in names:
        assert name in top.stdout
        result = run_without_extras(name, "--help")
        assert result.returncode == 0, f"natrelay {name} --help: {result.stderr}"
        assert "Usage" in result.stdout


@pytest.mark.parametrize(
    ("args", "extra"),
    [(("fuzz", "--examples", "1"), "fuzz"), (("bench", "--no-postgres"), "bench")],
)
def test_a_verb_needing_a_missing_extra_names_it_in_one_line(args: tuple[str, ...], extra: str) -> None:
    result = run_without_extras(*args)
    assert result.returncode == 2, result.stderr
    assert f"pip install 'natrelay[{extra}]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_simulate_runs_without_matplotlib_and_says_why_there_is_no_plot(tmp_path: Path) -> None:
    args = ("simulate", "--peers", "7", "--duration", "20", "--out", str(tmp_path), "--json")
    result = run_without_extras(*args)
    assert result.returncode == 0, result.stderr
    assert "no plot: matplotlib is not installed (pip install 'natrelay[sim]')" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("*.png")) and (tmp_path / "mesh.db").is_file()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel tools/wheel_check.sh built ($NATRELAY_WHEEL), or one built here."""
    given = os.environ.get("NATRELAY_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheel")
    # from a clean copy, as a fresh clone builds it (a stale egg-info here would add files)
    clean = tmp_path_factory.mktemp("src")
    sources = [p for folder in PACKAGE_DIRS.values() for p in source_files(folder)]
    for path in [ROOT / "pyproject.toml", ROOT / "README.md", *sources]:
        if path.is_file():
            (clean / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, clean / path.relative_to(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(clean)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (built,) = out.glob("*.whl")
    return built


def source_files(folder: Path) -> list[Path]:
    """The files of a package folder the repository holds (git's list; every file outside git)."""
    listed = subprocess.run(["git", "ls-files", "-z", str(folder)], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        return [ROOT / name for name in listed.stdout.split("\0") if name]
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_the_wheel_holds_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for package, folder in PACKAGE_DIRS.items():
        prefix = package.replace(".", "/")
        for path in source_files(folder):
            if not NOT_PACKAGE_DATA.fullmatch(path.relative_to(ROOT).as_posix()):
                expected.add(f"{prefix}/{path.relative_to(folder).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, f"{wheel.name} lacks {missing}"
    scenarios = {n for n in names if n.startswith("natrelay/adapters/sim/scenarios/")}
    assert len(scenarios) >= 3
    for package in PACKAGE_DIRS:
        assert f"{package.replace('.', '/')}/py.typed" in names
