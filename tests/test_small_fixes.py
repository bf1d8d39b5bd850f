"""Small things a user meets, through the real command line: the run's title in `status --json` and
kept by `pr --title`, `status --watch` into a pipe that closes early, and docs that name every command
and say how the agent is chosen."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import typer

from conftest import WSWARM, Repo, task, wswarm
from live_run import WAITING_AGENT, LiveRun
from worktree_swarm.cli import app

ROOT = Path(__file__).resolve().parents[1]
WRITE_TASK_FILE = 'Path(os.environ["WSWARM_TASK_ID"] + ".txt").write_text("done\\n")\n'


def finished_run(repo: Repo, tmp_path: Path, agent_script: Any, *args: str, goal: str | None = None) -> None:
    """A finished run of one merged task, from a plan file with GOAL (when given)."""
    tasks = [task("t")]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"goal": goal, "tasks": tasks} if goal else tasks))
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(WRITE_TASK_FILE), *args)
    assert res.returncode == 0, res.stderr


def title(repo: Repo) -> Any:
    res = wswarm(repo.path, "status", "--json")
    assert res.returncode == 0, res.stderr
    return res.json()["title"]


def test_status_json_names_the_title_from_the_plans_goal_or_start_title(repo: Repo, tmp_path: Path,
                                                                          agent_script: Any) -> None:
    finished_run(repo, tmp_path, agent_script, goal="add a /health endpoint")
    assert title(repo) == "add a /health endpoint"
    finished_run(repo, tmp_path, agent_script, "--title", "Health checks", goal="add a /health endpoint")
    assert title(repo) == "Health checks"
    # The typer command prints the same field (test_fast_commands compares the whole output).
    typer_path = subprocess.run([*WSWARM[:1], "-c", "import sys; sys.argv = ['wswarm', 'status', '--json']; "
                                 "from worktree_swarm.cli import main; main()"],
                                cwd=repo.path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert json.loads(typer_path.stdout)["title"] == "Health checks"


def test_pr_title_is_kept_for_the_run(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    finished_run(repo, tmp_path, agent_script, "--title", "first")
    res = wswarm(repo.path, "pr", "--title", "second")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "# wswarm: second (1/1 tasks)"
    # A later `pr` without --title, and `status --json`, use it.
    assert wswarm(repo.path, "pr").stdout.splitlines()[0] == "# wswarm: second (1/1 tasks)"
    assert title(repo) == "second"


def test_an_empty_pr_title_is_refused_and_changes_nothing(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    finished_run(repo, tmp_path, agent_script, "--title", "first")
    for bad in ("", "   "):
        res = wswarm(repo.path, "pr", "--title", bad)
        assert res.returncode == 2, res.stderr
        assert res.stdout == ""
        lines = res.stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith("wswarm: ") and "title" in lines[0], res.stderr
        assert lines[1].startswith("hint: ")
    assert title(repo) == "first"
    # Refused before the title is kept: --open without --push changes nothing either.
    assert wswarm(repo.path, "pr", "--title", "third", "--open").returncode == 2
    assert title(repo) == "first"


def test_status_watch_into_a_pipe_closed_early_ends_quietly(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("a"), task("b", dependencies=["a"])], tmp_path / "go")
    try:
        run.wait_event("agent-started", "a")
        # `wswarm status --watch | head -2`: two lines read, then the reader goes away.
        watcher = subprocess.Popen([*WSWARM, "status", "--watch"], cwd=repo.path, stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert watcher.stdout is not None and watcher.stderr is not None
        assert watcher.stdout.readline() and watcher.stdout.readline()
        watcher.stdout.close()
        run.release("a")        # new events for the watcher to write into the closed pipe
        code = watcher.wait(timeout=30)
        err = watcher.stderr.read().decode()
        # It stopped for its reader having gone, not for the run's end: b still waits.
        assert run.proc.poll() is None
        finished, _, run_err = run.finish()
    finally:
        run.stop()
    assert (code, err) == (0, "")
    assert finished == 0, run_err


def test_readme_and_the_guide_name_every_command_and_link_the_workers_page() -> None:
    commands = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"retry", "stats", "worker", "workers"} <= set(commands)
    for doc in ("README.md", "docs/index.md"):
        text = (ROOT / doc).read_text()
        missing = [c for c in commands if not re.search(rf"(wswarm |`){c}\b", text)]
        assert missing == [], f"{doc} does not name {missing}"
        assert "distributed.md" in text, doc
    assert len((ROOT / "README.md").read_text().splitlines()) < 50   # the README stays short


def test_agents_doc_says_how_the_agent_is_chosen_when_none_is_configured() -> None:
    paragraphs = (ROOT / "docs" / "agents.md").read_text().split("\n\n")
    [choice] = [p for p in paragraphs if "none is configured" in p or "no agent is configured" in p.lower()]
    flat = " ".join(choice.split())
    # In the order wswarm tries them, then what it says, then what it asks for when neither is there.
    assert re.search(r"`claude`.*`PATH`.*`ANTHROPIC_API_KEY`.*first line.*\[agents\] default = ", flat), flat
    assert "exit 2" in flat or "refuse" in flat, flat


def test_run_ids_sort_as_runs_were_started_even_within_one_second() -> None:
    from worktree_swarm.commands.start import new_run_id

    ids = [new_run_id(1_790_000_000 + ms / 1000) for ms in (1, 2, 10, 100, 999)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i.rsplit("-", 1)[1]) == 4 for i in ids)
