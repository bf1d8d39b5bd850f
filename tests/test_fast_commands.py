"""Read-only commands load only what they use, and `status --json` answered without typer prints
exactly what the typer command prints. No timing here: which modules a command loads is what
makes it slow, and that can be checked exactly (bench/status.py measures the time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Repo, wswarm, write_plan
from worktree_swarm.__main__ import fast_status

# What a read-only command never needs: the git library, the model client, the plan's graph, the
# diff parser, the search tool's regex engine.
HEAVY = ("pygit2", "anthropic", "networkx", "unidiff", "regex")
# What `status --json` and `--version` skip too: the command-line parser and the terminal renderer.
PARSER = ("typer", "pydantic", "rich", "click")

# Runs the command line in this process, then writes the names of every loaded module.
_LOADED = """
import json, sys
out, sys.argv = sys.argv[1], ["wswarm", *sys.argv[2:]]
from worktree_swarm.__main__ import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""
# The same command line, always through typer.
_TYPER = "import sys; sys.argv = ['wswarm', *sys.argv[1:]]; from worktree_swarm.cli import main; main()"


def loaded(cwd: Path, tmp_path: Path, *args: str) -> set[str]:
    """The top-level packages (and worktree_swarm's modules) loaded by `wswarm ARGS` run in CWD."""
    dump = tmp_path / "modules.json"
    res = subprocess.run([sys.executable, "-c", _LOADED, str(dump), *args], cwd=cwd, capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert res.returncode == 0, res.stderr
    data = json.loads(dump.read_text())
    assert data["code"] == 0, res.stderr
    names: list[str] = data["modules"]
    return {n.split(".")[0] for n in names} | {n for n in names if n.startswith("worktree_swarm.")}


def through_typer(cwd: Path, *args: str) -> tuple[int, str, str]:
    res = subprocess.run([sys.executable, "-c", _TYPER, *args], cwd=cwd, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=60)
    return res.returncode, res.stdout, res.stderr


def finished_run(repo: Repo, tmp_path: Path, agent_script: object) -> None:
    """A finished run of two tasks: one merged, one failed (so status has a reason and findings)."""
    cmd = agent_script(  # type: ignore[operator]
        'task = os.environ["WSWARM_TASK_ID"]\n'
        'Path(f"app/{task}.py").write_text("VALUE = 1\\n")\n'
        'sys.exit(1 if task == "bad" else 0)\n')
    plan = write_plan(tmp_path / "plan.json", [{"id": "good", "description": "d"},
                                               {"id": "bad", "description": "d"}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", cmd, "--max-attempts", "1")
    assert res.returncode == 1, res.stderr


def test_status_json_loads_no_parser_and_no_heavy_library(repo: Repo, tmp_path: Path, agent_script: object) -> None:
    finished_run(repo, tmp_path, agent_script)
    for args in (("status", "--json"), ("status", "--all", "--json"), ("--version",)):
        modules = loaded(repo.path, tmp_path, *args)
        assert not modules & {*HEAVY, *PARSER}, (args, sorted(modules & {*HEAVY, *PARSER}))
        assert "worktree_swarm.cli" not in modules, args


def test_other_read_only_commands_load_no_heavy_library(repo: Repo, tmp_path: Path, agent_script: object) -> None:
    finished_run(repo, tmp_path, agent_script)
    for args in (("--help",), ("status",), ("status", "--all"), ("logs", "good"), ("logs", "bad")):
        modules = loaded(repo.path, tmp_path, *args)
        assert not modules & set(HEAVY), (args, sorted(modules & set(HEAVY)))
        assert "worktree_swarm.ui.live" not in modules or args[0] == "status", args
    # --help describes the commands; it runs none of them.
    assert not {m for m in loaded(repo.path, tmp_path, "--help") if m.startswith("worktree_swarm.commands")}


def test_status_json_prints_what_the_typer_command_prints(repo: Repo, tmp_path: Path,
                                                          agent_script: object) -> None:
    finished_run(repo, tmp_path, agent_script)
    run = wswarm(repo.path, "status", "--json").json()["run"]
    empty = tmp_path / "empty"
    empty.mkdir()
    subprocess.run(["git", "init", "-q", str(empty)], check=True)
    cases: list[tuple[Path, tuple[str, ...]]] = [
        (repo.path, ("status", "--json")), (repo.path, ("status", run[:8], "--json")),
        (repo.path, ("status", "--json", "--all")), (repo.path, ("status", "--json", "nosuch")),
        (repo.path, ("--version",)), (repo.path / ".git", ("status", "--json")),
        (tmp_path, ("status", "--json")), (empty, ("status", "--json"))]
    codes = set()
    for cwd, args in cases:
        res = wswarm(cwd, *args)
        assert (res.returncode, res.stdout, res.stderr) == through_typer(cwd, *args), (cwd, args)
        codes.add(res.returncode)
    assert codes == {0, 2}   # both answers and refusals were compared
    assert [t["status"] for t in wswarm(repo.path, "status", "--json").json()["tasks"]] == ["merged", "failed"]


def test_a_crash_in_status_json_is_reported_as_typer_reports_it(repo: Repo, tmp_path: Path,
                                                                agent_script: object) -> None:
    finished_run(repo, tmp_path, agent_script)
    run_dir = next((repo.state_dir / "runs").iterdir())
    (run_dir / "state.db").write_bytes(b"not a database" * 100)
    fast = wswarm(repo.path, "status", "--json")
    code, stdout, stderr = through_typer(repo.path, "status", "--json")
    assert (fast.returncode, fast.stdout) == (code, stdout)
    # Each run keeps its own crash log; the lines around its name are the same.
    assert fast.stderr.split("the traceback is in")[0] == stderr.split("the traceback is in")[0]
    assert fast.returncode != 0 and fast.stderr.startswith("wswarm: ")


@pytest.mark.parametrize(("args", "parsed"), [
    (["status", "--json"], (None, False)),
    (["status", "r1", "--json"], ("r1", False)),
    (["status", "--json", "--all"], (None, True)),
    (["status"], None),                       # the board: rich's table
    (["status", "--json", "--watch"], None),  # refused by the typer command
    (["status", "--json", "--json"], None),
    (["status", "--json=1"], None),
    (["status", "--json", "a", "b"], None),
    (["status", "--json", "--"], None),
    (["status", "--json", "-x"], None),
    (["status", "--json", ""], None),
    (["--help"], None),
    (["logs", "--json"], None),
    ([], None),
])
def test_only_plain_status_json_skips_typer(args: list[str], parsed: tuple[str | None, bool] | None) -> None:
    assert fast_status(args) == parsed
