"""Which checks the gate runs when none are configured: read the checkout's files, never run its code."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from worktree_swarm.util import proc
from worktree_swarm.config import CheckConfig, Config

# Directories that hold installed, generated or vendored code, never the project's own.
_SKIP_DIRS = frozenset({"node_modules", "venv", "build", "dist", "__pycache__"})
_NPM_PLACEHOLDER = "Error: no test specified"
_IMPORT_TIMEOUT = 20.0
# mypy refuses `files` on the command line together with configured modules or packages.
_MYPY_TARGET_KEYS = ("files", "modules", "packages")


@dataclass(frozen=True)
class Detected:
    check: CheckConfig
    why: str                 # e.g. "tests/ exists", "[tool.mypy] in pyproject.toml"
    installed: bool
    missing: str | None      # what is not installed, e.g. "pytest (python -m pytest)"


def detect_checks(root: Path, *, python: str = "python3", which: Callable[[str], str | None] = shutil.which,
                  can_import: Callable[[str, str], bool] | None = None) -> list[Detected]:
    """The checks ROOT's files call for, in a fixed order (Python, then JavaScript); never raises
    for a missing or malformed file: what cannot be read detects nothing."""
    importable = can_import or _can_import
    files = _walk(root, max_depth=3)
    found: list[Detected] = []
    if _is_python(root, files):
        found += _python_checks(root, files, shlex.quote(python), python, which, importable)
    if (root / "package.json").is_file():
        found += _js_checks(root, which)
    return found


def announce(detected: Sequence[Detected]) -> str:
    """One line naming each detected check and why, then the ones that are not installed."""
    if not detected:
        return "gate: no checks detected (no Python or JavaScript project found); built-in diff checks only"
    items = ", ".join(d.check.name + (f" on changed {d.check.glob or 'files'}" if d.check.affected else "")
                      + f" ({d.why})" for d in detected)
    absent = [d.check.name for d in detected if not d.installed]
    return f"gate: detected {items}" + (f"; not installed: {', '.join(absent)}" if absent else "")


def _python_checks(root: Path, files: list[str], py: str, python: str, which: Callable[[str], str | None],
                   importable: Callable[[str, str], bool]) -> list[Detected]:
    pyproject = _toml(root / "pyproject.toml")
    tool = _table(pyproject, "tool")
    setup_cfg = _ini(root / "setup.cfg")
    out: list[Detected] = []

    why = _tests_reason(root, files, tool, setup_cfg)
    if why is not None:
        out.append(_module_check(CheckConfig(name="pytest", run=f"{py} -m pytest -q -rfE", kind="tests", timeout=900),
                                 why, py, python, importable))

    mypy = _mypy_config(root, tool, setup_cfg)
    if mypy is not None:
        why, has_targets = mypy
        run = f"{py} -m mypy" + ("" if has_targets else " .")
        out.append(_module_check(CheckConfig(name="mypy", run=run, kind="types", timeout=600),
                                 why, py, python, importable))
    pyright = ("pyrightconfig.json exists" if (root / "pyrightconfig.json").is_file()
               else "[tool.pyright] in pyproject.toml" if _table(tool, "pyright") is not None else None)
    if pyright is not None:
        out.append(_on_path("pyright", "types", 600, pyright, "pyright", which))

    out.append(_module_check(CheckConfig(name="bandit", run=f"{py} -m bandit -q -ll", kind="security", timeout=300,
                                         affected=True, glob="*.py"), "Python files", py, python, importable))

    ruff = next((f"{name} exists" for name in (".ruff.toml", "ruff.toml") if (root / name).is_file()),
                "[tool.ruff] in pyproject.toml" if _table(tool, "ruff") is not None else None)
    if ruff is not None:
        as_module = importable(python, "ruff")
        on_path = not as_module and which("ruff") is not None
        out.append(Detected(
            CheckConfig(name="ruff", run="ruff check" if on_path else f"{py} -m ruff check", kind="lint",
                        timeout=300, affected=True, glob="*.py"),
            ruff, as_module or on_path, None if as_module or on_path else f"ruff ({py} -m ruff or ruff on PATH)"))
    return out


def _js_checks(root: Path, which: Callable[[str], str | None]) -> list[Detected]:
    out: list[Detected] = []
    try:
        package = json.loads((root / "package.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        package = None
    scripts = package.get("scripts") if isinstance(package, dict) else None
    test = scripts.get("test") if isinstance(scripts, dict) else None
    if isinstance(test, str) and test.strip() and _NPM_PLACEHOLDER not in test:
        out.append(_on_path("npm-test", "tests", 900, '"test" script in package.json', "npm test --silent",
                            which, tool="npm"))
    if (root / "tsconfig.json").is_file():
        tsc = (root / "node_modules" / ".bin" / "tsc").exists() or which("tsc") is not None
        out.append(Detected(CheckConfig(name="tsc", run="npx --no-install tsc --noEmit", kind="types", timeout=600),
                            "tsconfig.json exists", tsc, None if tsc else "tsc (not in node_modules/.bin or on PATH)"))
    if (root / "package-lock.json").is_file():
        out.append(_on_path("npm-audit", "security", 300, "package-lock.json exists", "npm audit --audit-level=high",
                            which, tool="npm"))
    return out


def _module_check(check: CheckConfig, why: str, py: str, python: str,
                  importable: Callable[[str, str], bool]) -> Detected:
    """CHECK, run as `python -m NAME`, installed when PYTHON imports the module of that name."""
    ok = importable(python, check.name)
    return Detected(check, why, ok, None if ok else f"{check.name} ({py} -m {check.name})")


def _on_path(name: str, kind: str, timeout: float, why: str, run: str, which: Callable[[str], str | None],
             *, tool: str | None = None) -> Detected:
    program = tool or name
    ok = which(program) is not None
    return Detected(CheckConfig(name=name, run=run, kind=kind, timeout=timeout), why, ok,
                    None if ok else f"{program} (not on PATH)")


def _tests_reason(root: Path, files: list[str], tool: dict[str, Any] | None,
                  setup_cfg: configparser.ConfigParser | None) -> str | None:
    for name in ("tests", "test"):
        if (root / name).is_dir():
            return f"{name}/ exists"
    base = [(path, path.rsplit("/", 1)[-1]) for path in files]
    for path, name in base:
        if name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py")):
            return f"{path} exists"
    for path, name in base:
        if name == "conftest.py":
            return f"{path} exists"
    if (root / "pytest.ini").is_file():
        return "pytest.ini exists"
    if _table(_table(tool, "pytest"), "ini_options") is not None:
        return "[tool.pytest.ini_options] in pyproject.toml"
    tox = _ini(root / "tox.ini")
    if tox is not None and tox.has_section("pytest"):
        return "[pytest] in tox.ini"
    if setup_cfg is not None and setup_cfg.has_section("tool:pytest"):
        return "[tool:pytest] in setup.cfg"
    return None


def _mypy_config(root: Path, tool: dict[str, Any] | None,
                 setup_cfg: configparser.ConfigParser | None) -> tuple[str, bool] | None:
    """(why, whether the config names what to check), from the first file mypy itself would read."""
    for name in ("mypy.ini", ".mypy.ini"):
        ini = _ini(root / name)
        if ini is not None:
            section = ini["mypy"] if ini.has_section("mypy") else {}
            return f"{name} exists", any(section.get(key, "").strip() for key in _MYPY_TARGET_KEYS)
    table = _table(tool, "mypy")
    if table is not None:
        return "[tool.mypy] in pyproject.toml", any(table.get(key) for key in _MYPY_TARGET_KEYS)
    if setup_cfg is not None and setup_cfg.has_section("mypy"):
        return "[mypy] in setup.cfg", any(setup_cfg["mypy"].get(key, "").strip() for key in _MYPY_TARGET_KEYS)
    return None


def _is_python(root: Path, files: list[str]) -> bool:
    return (any((root / name).is_file() for name in ("pyproject.toml", "setup.py", "setup.cfg"))
            or any(path.endswith(".py") and path.count("/") < 2 for path in files))


def _walk(root: Path, *, max_depth: int) -> list[str]:
    """Relative paths of the files at most MAX_DEPTH levels down, sorted, skipping hidden and vendored dirs."""
    found: list[str] = []

    def visit(folder: Path, prefix: str, depth: int) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            # Symlinked directories are not followed: they can loop or leave the checkout.
            if entry.is_dir(follow_symlinks=False):
                if depth < max_depth and entry.name not in _SKIP_DIRS:
                    visit(Path(entry.path), f"{prefix}{entry.name}/", depth + 1)
            elif entry.is_file():
                found.append(prefix + entry.name)

    visit(root, "", 1)
    return found


def _toml(path: Path) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None


def _ini(path: Path) -> configparser.ConfigParser | None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(path.read_text(encoding="utf-8"), source=str(path))
    except (OSError, UnicodeDecodeError, configparser.Error):
        return None
    return parser


def _table(data: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    value = data.get(key) if data is not None else None
    return value if isinstance(value, dict) else None


def _can_import(python: str, module: str) -> bool:
    """Whether PYTHON imports MODULE; False when the interpreter is missing, broken or too slow."""
    # An empty working directory: `python -c` puts it first on sys.path, and the project's own
    # files (a local pytest.py, say) must neither shadow the tool nor run.
    with tempfile.TemporaryDirectory(prefix="wswarm-import-") as empty:
        try:
            res = proc.run(python, "-c", f"import {module}", cwd=Path(empty), check=False,
                           timeout=_IMPORT_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            return False
    return res.returncode == 0


# Every check detection made in this process: a detected check that fails on the base is usually
# run the wrong way for the project (say, its tests without the package importable), which the
# user is told once, with the hint to configure it.
_DETECTED: set[CheckConfig] = set()


def is_detected(check: CheckConfig) -> bool:
    """Whether CHECK is one that detection chose (not one the configuration names)."""
    return check in _DETECTED


def with_detected_checks(config: Config, root: Path) -> tuple[Config, str | None]:
    """CONFIG as it is when checks are configured; else with the checks detected in ROOT (the
    missing ones kept aside to be reported as not run) and the one line that announces them."""
    if config.gate.checks:
        return config, None
    found = detect_checks(root)
    _DETECTED.update(d.check for d in found)
    gate = replace(config.gate, checks=tuple(d.check for d in found if d.installed),
                   not_installed=tuple((d.check.name, d.check.kind, d.missing or "not installed")
                                       for d in found if not d.installed))
    return replace(config, gate=gate), announce(found)
