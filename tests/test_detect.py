"""Gate auto-detection: real project files in tmp dirs; the tool lookups injected, and once each for real."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from worktree_swarm.config import CheckConfig
from worktree_swarm.gate.detect import Detected, announce, detect_checks

MAIN_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv" / "bin" / "python"

PYTEST = CheckConfig(name="pytest", run="python3 -m pytest -q -rfE", kind="tests", timeout=900)
BANDIT = CheckConfig(name="bandit", run="python3 -m bandit -q -ll", kind="security", timeout=300,
                     affected=True, glob="*.py")
MYPY_DOT = CheckConfig(name="mypy", run="python3 -m mypy .", kind="types", timeout=600)
MYPY_FILES = CheckConfig(name="mypy", run="python3 -m mypy", kind="types", timeout=600)
PYRIGHT = CheckConfig(name="pyright", run="pyright", kind="types", timeout=600)
RUFF_MODULE = CheckConfig(name="ruff", run="python3 -m ruff check", kind="lint", timeout=300,
                          affected=True, glob="*.py")
NPM_TEST = CheckConfig(name="npm-test", run="npm test --silent", kind="tests", timeout=900)
TSC = CheckConfig(name="tsc", run="npx --no-install tsc --noEmit", kind="types", timeout=600)
NPM_AUDIT = CheckConfig(name="npm-audit", run="npm audit --audit-level=high", kind="security", timeout=300)


def project(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def on_path(*programs: str) -> Callable[[str], str | None]:
    return lambda name: f"/usr/bin/{name}" if name in programs else None


def imports(*modules: str) -> Callable[[str, str], bool]:
    return lambda python, module: module in modules


def detect(root: Path, *, which: Callable[[str], str | None] = on_path("pyright", "ruff", "npm", "tsc"),
           can_import: Callable[[str, str], bool] = imports("pytest", "mypy", "bandit", "ruff"),
           python: str = "python3") -> list[Detected]:
    return detect_checks(root, python=python, which=which, can_import=can_import)


def names(found: list[Detected]) -> list[str]:
    return [d.check.name for d in found]


# --- Python -------------------------------------------------------------------------------------

def test_python_project_with_tests_and_mypy_files(tmp_path: Path) -> None:
    project(tmp_path, {"pyproject.toml": '[tool.mypy]\nfiles = ["pkg"]\n', "pkg/__init__.py": "",
                       "tests/test_a.py": ""})
    found = detect(tmp_path)
    assert found == [Detected(PYTEST, "tests/ exists", True, None),
                     Detected(MYPY_FILES, "[tool.mypy] in pyproject.toml", True, None),
                     Detected(BANDIT, "Python files", True, None)]
    assert announce(found) == ("gate: detected pytest (tests/ exists), mypy ([tool.mypy] in pyproject.toml), "
                               "bandit on changed *.py (Python files)")


def test_python_project_without_tests_gets_only_bandit(tmp_path: Path) -> None:
    project(tmp_path, {"setup.py": "from setuptools import setup\nsetup()\n"})
    found = detect(tmp_path, can_import=imports())
    assert found == [Detected(BANDIT, "Python files", False, "bandit (python3 -m bandit)")]
    assert announce(found) == ("gate: detected bandit on changed *.py (Python files); "
                               "not installed: bandit")


@pytest.mark.parametrize(("files", "why"), [
    ({"test/x.py": ""}, "test/ exists"),
    ({"app.py": "", "pkg/sub/test_core.py": ""}, "pkg/sub/test_core.py exists"),
    ({"app.py": "", "pkg/core_test.py": ""}, "pkg/core_test.py exists"),
    ({"app.py": "", "conftest.py": ""}, "conftest.py exists"),
    ({"app.py": "", "pytest.ini": "[pytest]\n"}, "pytest.ini exists"),
    ({"pyproject.toml": "[tool.pytest.ini_options]\naddopts = '-q'\n"}, "[tool.pytest.ini_options] in pyproject.toml"),
    ({"app.py": "", "tox.ini": "[tox]\n[pytest]\naddopts = -q\n"}, "[pytest] in tox.ini"),
    ({"setup.cfg": "[metadata]\nname = x\n[tool:pytest]\naddopts = -q\n"}, "[tool:pytest] in setup.cfg"),
])
def test_each_sign_of_tests_detects_pytest(tmp_path: Path, files: dict[str, str], why: str) -> None:
    found = detect(project(tmp_path, files))
    assert found[0] == Detected(PYTEST, why, True, None)
    assert names(found) == ["pytest", "bandit"]


@pytest.mark.parametrize("files", [
    {"app.py": "", "a/b/c/test_deep.py": ""},           # depth 4: too deep to count
    {"app.py": "", "node_modules/x/test_a.py": ""},     # vendored
    {"app.py": "", ".venv/lib/test_a.py": ""},          # hidden
    {"app.py": "", "build/test_a.py": "", "dist/conftest.py": ""},
    {"app.py": "", "tox.ini": "[tox]\nenvlist = py311\n", "setup.cfg": "[flake8]\nmax-line-length = 100\n"},
    {"app.py": "", "testing_notes.py": "", "tests.txt": ""},
])
def test_no_sign_of_tests_means_no_pytest(tmp_path: Path, files: dict[str, str]) -> None:
    assert names(detect(project(tmp_path, files))) == ["bandit"]


def test_python_is_recognised_by_a_py_file_at_depth_two_but_not_three(tmp_path: Path) -> None:
    assert detect(project(tmp_path / "deep", {"a/b/c.py": ""})) == []
    assert names(detect(project(tmp_path / "shallow", {"scripts/tool.py": ""}))) == ["bandit"]
    assert names(detect(project(tmp_path / "cfg", {"setup.cfg": "[metadata]\nname = x\n"}))) == ["bandit"]


@pytest.mark.parametrize(("files", "check", "why"), [
    ({"mypy.ini": "[mypy]\nstrict = True\n"}, MYPY_DOT, "mypy.ini exists"),
    ({"mypy.ini": "[mypy]\nfiles = src, tools\n"}, MYPY_FILES, "mypy.ini exists"),
    ({".mypy.ini": "[mypy]\n"}, MYPY_DOT, ".mypy.ini exists"),
    ({"setup.cfg": "[mypy]\nstrict = True\n"}, MYPY_DOT, "[mypy] in setup.cfg"),
    ({"setup.cfg": "[mypy]\nfiles = src\n"}, MYPY_FILES, "[mypy] in setup.cfg"),
    ({"pyproject.toml": "[tool.mypy]\nstrict = true\n"}, MYPY_DOT, "[tool.mypy] in pyproject.toml"),
    ({"pyproject.toml": "[tool.mypy]\nfiles = []\n"}, MYPY_DOT, "[tool.mypy] in pyproject.toml"),
    ({"pyproject.toml": '[tool.mypy]\npackages = ["pkg"]\n'}, MYPY_FILES, "[tool.mypy] in pyproject.toml"),
    # mypy reads only the first config it finds: mypy.ini wins over pyproject.toml.
    ({"mypy.ini": "[mypy]\n", "pyproject.toml": '[tool.mypy]\nfiles = ["pkg"]\n'}, MYPY_DOT, "mypy.ini exists"),
])
def test_mypy_when_configured(tmp_path: Path, files: dict[str, str], check: CheckConfig, why: str) -> None:
    found = detect(project(tmp_path, {"app.py": "", **files}))
    assert found == [Detected(check, why, True, None), Detected(BANDIT, "Python files", True, None)]


def test_mypy_not_detected_from_an_unrelated_setup_cfg(tmp_path: Path) -> None:
    project(tmp_path, {"setup.cfg": "[mypy-foo.*]\nignore_missing_imports = True\n"})
    assert names(detect(tmp_path)) == ["bandit"]


def test_mypy_and_pyright_both_detected_pyright_looked_up_on_path(tmp_path: Path) -> None:
    project(tmp_path, {"pyproject.toml": "[tool.mypy]\n[tool.pyright]\n", "app.py": ""})
    found = detect(tmp_path, which=on_path())
    assert found[:2] == [Detected(MYPY_DOT, "[tool.mypy] in pyproject.toml", True, None),
                         Detected(PYRIGHT, "[tool.pyright] in pyproject.toml", False, "pyright (not on PATH)")]
    assert announce(found) == ("gate: detected mypy ([tool.mypy] in pyproject.toml), pyright ([tool.pyright] in "
                               "pyproject.toml), bandit on changed *.py (Python files); not installed: pyright")


def test_pyrightconfig_json(tmp_path: Path) -> None:
    found = detect(project(tmp_path, {"pyrightconfig.json": "{}", "app.py": ""}))
    assert found[0] == Detected(PYRIGHT, "pyrightconfig.json exists", True, None)


@pytest.mark.parametrize(("files", "why"), [
    ({"ruff.toml": "line-length = 100\n"}, "ruff.toml exists"),
    ({".ruff.toml": ""}, ".ruff.toml exists"),
    ({"pyproject.toml": "[tool.ruff]\nline-length = 100\n"}, "[tool.ruff] in pyproject.toml"),
])
def test_ruff_when_configured(tmp_path: Path, files: dict[str, str], why: str) -> None:
    found = detect(project(tmp_path, {"app.py": "", **files}))
    assert found[-1] == Detected(RUFF_MODULE, why, True, None)


def test_ruff_prefers_the_module_then_path_then_reports_missing(tmp_path: Path) -> None:
    project(tmp_path, {"ruff.toml": "", "app.py": ""})
    on_path_only = detect(tmp_path, can_import=imports("bandit"), which=on_path("ruff"))[-1]
    assert on_path_only == Detected(CheckConfig(name="ruff", run="ruff check", kind="lint", timeout=300,
                                                affected=True, glob="*.py"), "ruff.toml exists", True, None)
    nowhere = detect(tmp_path, can_import=imports("bandit"), which=on_path())
    assert nowhere[-1] == Detected(RUFF_MODULE, "ruff.toml exists", False, "ruff (python3 -m ruff or ruff on PATH)")
    assert announce(nowhere) == ("gate: detected bandit on changed *.py (Python files), ruff on changed *.py "
                                 "(ruff.toml exists); not installed: ruff")


def test_the_interpreter_is_shell_quoted_in_commands_and_passed_raw_to_can_import(tmp_path: Path) -> None:
    asked: list[tuple[str, str]] = []

    def can_import(python: str, module: str) -> bool:
        asked.append((python, module))
        return False

    project(tmp_path, {"tests/test_a.py": "", "pyproject.toml": "[tool.mypy]\n"})
    found = detect(tmp_path, python="/opt/my py/bin/python", can_import=can_import)
    assert [d.check.run for d in found] == ["'/opt/my py/bin/python' -m pytest -q -rfE",
                                            "'/opt/my py/bin/python' -m mypy .",
                                            "'/opt/my py/bin/python' -m bandit -q -ll"]
    assert found[0].missing == "pytest ('/opt/my py/bin/python' -m pytest)"
    assert asked == [("/opt/my py/bin/python", m) for m in ("pytest", "mypy", "bandit")]


# --- JavaScript / TypeScript ----------------------------------------------------------------------

def test_js_with_test_script_tsconfig_local_tsc_and_lockfile(tmp_path: Path) -> None:
    project(tmp_path, {"package.json": '{"scripts": {"test": "vitest run"}}', "tsconfig.json": "{}",
                       "node_modules/.bin/tsc": "", "package-lock.json": "{}"})
    found = detect(tmp_path, which=on_path("npm"))
    assert found == [Detected(NPM_TEST, '"test" script in package.json', True, None),
                     Detected(TSC, "tsconfig.json exists", True, None),
                     Detected(NPM_AUDIT, "package-lock.json exists", True, None)]
    assert announce(found) == ('gate: detected npm-test ("test" script in package.json), tsc (tsconfig.json exists), '
                               "npm-audit (package-lock.json exists)")


def test_js_without_npm_or_tsc_reports_them_missing(tmp_path: Path) -> None:
    project(tmp_path, {"package.json": '{"scripts": {"test": "jest"}}', "tsconfig.json": "{}",
                       "package-lock.json": "{}"})
    found = detect(tmp_path, which=on_path())
    assert [(d.installed, d.missing) for d in found] == [
        (False, "npm (not on PATH)"), (False, "tsc (not in node_modules/.bin or on PATH)"),
        (False, "npm (not on PATH)")]
    assert announce(found).endswith("; not installed: npm-test, tsc, npm-audit")
    assert detect(tmp_path, which=on_path("tsc"))[1] == Detected(TSC, "tsconfig.json exists", True, None)


@pytest.mark.parametrize("package", [
    '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}',   # what `npm init` writes
    '{"scripts": {"build": "tsc"}}',
    '{"scripts": {"test": ""}}',
    '{"scripts": {"test": ["jest"]}}',
    '{"scripts": "jest"}',
    '["not", "an", "object"]',
    '{"scripts": {"test": "jest",',                                            # malformed
])
def test_no_usable_test_script(tmp_path: Path, package: str) -> None:
    project(tmp_path, {"package.json": package, "tsconfig.json": "{}"})
    assert names(detect(tmp_path)) == ["tsc"]


def test_tsconfig_or_lockfile_without_package_json_is_not_a_js_project(tmp_path: Path) -> None:
    project(tmp_path, {"tsconfig.json": "{}", "package-lock.json": "{}"})
    assert detect(tmp_path) == []


# --- Mixed, empty, malformed ----------------------------------------------------------------------

def test_mixed_repository_lists_python_then_js_checks(tmp_path: Path) -> None:
    project(tmp_path, {"pyproject.toml": "[tool.mypy]\nfiles = ['api']\n[tool.ruff]\n", "api/main.py": "",
                       "api/tests/test_main.py": "", "web/x.ts": "", "package.json": '{"scripts": {"test": "vitest"}}',
                       "tsconfig.json": "{}", "package-lock.json": "{}"})
    found = detect(tmp_path)
    assert names(found) == ["pytest", "mypy", "bandit", "ruff", "npm-test", "tsc", "npm-audit"]
    assert found[0].why == "api/tests/test_main.py exists"
    assert announce(found) == (
        "gate: detected pytest (api/tests/test_main.py exists), mypy ([tool.mypy] in pyproject.toml), "
        "bandit on changed *.py (Python files), ruff on changed *.py ([tool.ruff] in pyproject.toml), "
        'npm-test ("test" script in package.json), tsc (tsconfig.json exists), npm-audit (package-lock.json exists)')


def test_empty_repository(tmp_path: Path) -> None:
    project(tmp_path, {"README.md": "hi\n", ".git/HEAD": "ref: refs/heads/main\n", "docs/a.md": ""})
    assert detect(tmp_path) == []
    assert announce([]) == ("gate: no checks detected (no Python or JavaScript project found); "
                            "built-in diff checks only")


def test_malformed_files_detect_nothing_from_themselves_and_never_raise(tmp_path: Path) -> None:
    project(tmp_path, {"pyproject.toml": "[tool.mypy\nfiles = \n", "setup.cfg": "no section header\n",
                       "tox.ini": "[pytest\n", "mypy.ini": "garbage without a section\n", "tests/test_a.py": "",
                       "package.json": "{", "tsconfig.json": "{"})
    (tmp_path / "ruff.toml").write_bytes(b"\xff\xfe")
    found = detect(tmp_path)
    # mypy.ini cannot be parsed, and nothing else configures mypy; ruff.toml exists, so ruff counts.
    assert names(found) == ["pytest", "bandit", "ruff", "tsc"]


def test_a_non_table_tool_key_is_ignored(tmp_path: Path) -> None:
    project(tmp_path, {"pyproject.toml": 'tool = "x"\n'})
    assert names(detect(tmp_path)) == ["bandit"]


def test_announce_lists_every_missing_tool(tmp_path: Path) -> None:
    project(tmp_path, {"tests/test_a.py": ""})
    found = detect(tmp_path, can_import=imports())
    assert announce(found) == ("gate: detected pytest (tests/ exists), bandit on changed *.py (Python files); "
                               "not installed: pytest, bandit")


# --- The real defaults: real interpreters, a real PATH -----------------------------------------------

@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


def python_project(root: Path) -> Path:
    return project(root, {"pyproject.toml": "[tool.mypy]\n", "tests/test_a.py": ""})


def test_real_can_import_with_an_interpreter_that_has_pytest_and_mypy(tmp_path: Path) -> None:
    assert MAIN_VENV_PYTHON.exists()
    python = str(MAIN_VENV_PYTHON)
    found = detect_checks(python_project(tmp_path), python=python)
    assert [(d.check.name, d.installed) for d in found][:2] == [("pytest", True), ("mypy", True)]
    assert found[0].check.run == f"{python} -m pytest -q -rfE"


def test_real_can_import_with_a_bare_interpreter(tmp_path: Path, bare_python: str) -> None:
    # A project file named like the tool must not count: detection never imports the project's code.
    project(tmp_path, {"pytest.py": "raise SystemExit(0)\n", "mypy.py": ""})
    found = detect_checks(python_project(tmp_path), python=bare_python)
    assert [(d.check.name, d.installed, d.missing) for d in found] == [
        ("pytest", False, f"pytest ({bare_python} -m pytest)"),
        ("mypy", False, f"mypy ({bare_python} -m mypy)"),
        ("bandit", False, f"bandit ({bare_python} -m bandit)")]


def test_real_can_import_with_a_missing_interpreter(tmp_path: Path) -> None:
    found = detect_checks(python_project(tmp_path), python=str(tmp_path / "no-such-python"))
    assert [d.installed for d in found] == [False, False, False]


def test_real_which_finds_a_tool_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    project(tmp_path / "repo", {"pyrightconfig.json": "{}", "app.py": ""})
    monkeypatch.setenv("PATH", str(bin_dir))
    assert detect_checks(tmp_path / "repo", can_import=imports())[0].installed is False
    pyright = bin_dir / "pyright"
    pyright.write_text("#!/bin/sh\nexit 0\n")
    pyright.chmod(0o755)
    assert detect_checks(tmp_path / "repo", can_import=imports())[0] == Detected(
        PYRIGHT, "pyrightconfig.json exists", True, None)
