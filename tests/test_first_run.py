"""What a new user meets first, through the real command line: the agent chosen when none is
configured, the goal kept in a plan file and used as the run's title, no more slots than the plan
can use, no build junk in leftover commits, and the small things said instead of left unsaid."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import WSWARM, Repo, wswarm, write_plan
from tests.fakeapi import FakeAnthropic, text, tool_use

ROOT = Path(__file__).resolve().parents[1]
GOAL = "add a /health endpoint"
PLANNED = [{"id": "health", "type": "backend", "description": "Add health.py with a health() function",
            "dependencies": [], "files": ["health.py"]}]
WRITE_TASK_FILE = """\
Path(os.environ["WSWARM_TASK_ID"] + ".txt").write_text("done\\n")
"""


def nothing_to_choose(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the Claude Code CLI on PATH nor an API key, whatever the machine running the tests has."""
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    monkeypatch.setenv("PATH", os.pathsep.join(d for d in dirs if not (Path(d) / "claude").exists()))


def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `claude` on PATH that writes health.py in its worktree and reports stream-json success."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "claude"
    script.write_text(f"#!{sys.executable}\n"
                      "import json, pathlib, sys\n"
                      "sys.stdin.readline()  # the prompt: one stream-json line\n"
                      "pathlib.Path('health.py').write_text('def health():\\n    return \"ok\"\\n')\n"
                      "print(json.dumps({'type': 'result', 'subtype': 'success', 'is_error': False,"
                      " 'result': 'added health()'}))\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return script


def runs(repo: Repo) -> list[Path]:
    folder = repo.state_dir / "runs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def worktree_count(repo: Repo) -> int:
    return len(repo.git("worktree", "list").splitlines())


# -- item: a first `start "GOAL"` that works -----------------------------------------------------------

def test_with_nothing_to_choose_start_goal_fails_before_planning_naming_the_setting(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    nothing_to_choose(monkeypatch)
    with FakeAnthropic() as api:
        res = wswarm(repo.path, "start", GOAL, "--yes", env={"ANTHROPIC_BASE_URL": api.url})
        assert api.messages() == []
    assert res.returncode == 2, res.stderr
    first, hint = res.stderr.splitlines()
    assert first.startswith("wswarm: no agent is configured") and "preflight" not in res.stderr
    assert '[agents] default = "claude" | "anthropic"' in hint
    assert not repo.state_dir.exists()


def test_the_claude_cli_on_path_is_chosen_and_said_on_the_first_line(
        repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nothing_to_choose(monkeypatch)
    fake_claude(tmp_path, monkeypatch)
    plan = write_plan(tmp_path / "plan.json", PLANNED)

    res = wswarm(repo.path, "start", "--plan", str(plan))

    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines()[0].startswith("agent: claude — the Claude Code CLI found on PATH")
    status = wswarm(repo.path, "status", "--json").json()
    assert repo.show(status["integration_branch"], "health.py").startswith("def health()")


def test_with_an_api_key_start_goal_chooses_the_built_in_agent(repo: Repo, monkeypatch: pytest.MonkeyPatch,
                                                               fake_api: FakeAnthropic) -> None:
    nothing_to_choose(monkeypatch)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789abcdef0123456789")
    fake_api.on(GOAL, tool_use("submit_plan", {"tasks": PLANNED}))
    fake_api.on("Add health.py", tool_use("write", {"path": "health.py", "content": "def health():\n    return 1\n"}))
    fake_api.on("created health.py", text("Added health()."))

    res = wswarm(repo.path, "start", GOAL, "--yes", timeout=180)

    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert lines[0].startswith("agent: anthropic — the built-in agent (ANTHROPIC_API_KEY is set)")
    assert sum(line.startswith("agent: ") for line in lines) == 1
    status = wswarm(repo.path, "status", "--json").json()
    assert repo.show(status["integration_branch"], "health.py").startswith("def health()")
    # The run's title is the goal, and the plan kept under the run carries it.
    pr = wswarm(repo.path, "pr")
    assert pr.stdout.splitlines()[0] == f"# wswarm: {GOAL} (1/1 tasks)"
    (run_dir,) = runs(repo)
    assert json.loads((run_dir / "plan.json").read_text())["goal"] == GOAL


def test_a_configured_command_agent_is_not_overridden(repo: Repo, tmp_path: Path, agent_script: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake_claude(tmp_path, monkeypatch)
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "x"}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(WRITE_TASK_FILE))
    assert res.returncode == 0, res.stderr
    assert not any(line.startswith("agent: ") for line in res.stderr.splitlines())


# -- item: the goal is kept ------------------------------------------------------------------------------

def test_plan_writes_the_goal_and_start_plan_titles_the_run_after_it(repo: Repo, tmp_path: Path,
                                                                      fake_api: FakeAnthropic,
                                                                      agent_script: Any) -> None:
    fake_api.on(GOAL, tool_use("submit_plan", {"tasks": PLANNED}))
    res = wswarm(repo.path, "plan", GOAL, "-o", "plan.json")
    assert res.returncode == 0, res.stderr
    written = json.loads((repo.path / "plan.json").read_text())
    assert written["goal"] == GOAL and [t["id"] for t in written["tasks"]] == ["health"]

    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent_script(WRITE_TASK_FILE))
    assert res.returncode == 0, res.stderr
    assert wswarm(repo.path, "pr").stdout.splitlines()[0] == f"# wswarm: {GOAL} (1/1 tasks)"


def test_title_flags_name_the_run_and_the_pr(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "tasks.json", [{"id": "t", "description": "x"}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--title", "Health checks",
                 "--agent-cmd", agent_script(WRITE_TASK_FILE))
    assert res.returncode == 0, res.stderr
    assert wswarm(repo.path, "pr").stdout.splitlines()[0] == "# wswarm: Health checks (1/1 tasks)"
    assert wswarm(repo.path, "pr", "--title", "Other").stdout.splitlines()[0] == "# wswarm: Other (1/1 tasks)"


def test_a_goal_and_a_plan_file_together_are_refused_in_one_line(repo: Repo, tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "x"}])
    res = wswarm(repo.path, "start", GOAL, "--plan", str(plan))
    assert res.returncode == 2
    assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("wswarm: give a goal or --plan, not both")
    assert not repo.state_dir.exists()


# -- item: no more slots than the plan can use -----------------------------------------------------------

@pytest.mark.parametrize("tasks, slots", [
    ([{"id": "only", "description": "x"}], 1),
    ([{"id": "a", "description": "x"}, {"id": "b", "description": "x"},
      {"id": "c", "description": "x", "dependencies": ["a", "b"]}], 2),
], ids=["one-task", "two-side-by-side"])
def test_slots_are_no_more_than_the_tasks_that_can_run_at_once(repo: Repo, tmp_path: Path, agent_script: Any,
                                                               tasks: list[dict[str, Any]], slots: int) -> None:
    plan = write_plan(tmp_path / "plan.json", tasks)
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "8", "--agent-cmd",
                 agent_script(WRITE_TASK_FILE))
    assert res.returncode == 0, res.stderr
    assert f"8 agents (at most {slots} at once: the plan allows no more)" in res.stderr
    assert worktree_count(repo) == 1 + slots


# -- item: build junk stays out of leftover commits -----------------------------------------------------

JUNK_AGENT = """\
for rel, data in {"app/health.py": "X = 1\\n", "app/__pycache__/health.cpython-311.pyc": "junk",
                  "node_modules/left-pad/index.js": "junk", ".DS_Store": "junk", "app/.health.py.swp": "junk",
                  "app/health.py~": "junk", ".coverage": "junk", "htmlcov/index.html": "junk",
                  ".pytest_cache/v/cache/lastfailed": "{}", "tracked.pyc": "changed"}.items():
    Path(rel).parent.mkdir(parents=True, exist_ok=True)
    Path(rel).write_text(data)
"""


def test_leftover_commits_leave_generated_files_out_and_say_so(repo: Repo, tmp_path: Path,
                                                               agent_script: Any) -> None:
    assert not (repo.path / ".gitignore").exists()
    repo.write("tracked.pyc", "committed on purpose")       # already tracked: still committed when changed
    repo.commit_all("a tracked pyc")
    plan = write_plan(tmp_path / "plan.json", [{"id": "health", "description": "x",
                                                "files": ["app/**", "tracked.pyc"]}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(JUNK_AGENT))

    assert res.returncode == 0, res.stderr
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    files = set(repo.git("ls-tree", "-r", "--name-only", branch).splitlines())
    assert {"app/health.py", "tracked.pyc"} <= files
    assert files - {"app/health.py", "tracked.pyc"} == {"README.md", "app/__init__.py", "app/core.py"}
    assert repo.show(branch, "tracked.pyc") == "changed"
    logs = wswarm(repo.path, "logs", "health").stdout
    assert "leftovers.log" in logs
    for entry in (".DS_Store", ".coverage", "app/.health.py.swp", "app/health.py~", "app/__pycache__/ (1 file)",
                  "node_modules/ (1 file)", "htmlcov/ (1 file)", ".pytest_cache/ (1 file)"):
        assert f"  {entry}\n" in logs, logs
    run_dir = next((repo.state_dir / "runs").iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    [excluded] = [e for e in events if e["kind"] == "leftovers-excluded"]
    assert "node_modules/ (1 file)" in excluded["files"] and excluded["attempt"] == 1


MANY_JUNK_AGENT = """\
Path("app/health.py").write_text("X = 2\\n")
Path("build").mkdir()
for i in range(250):          # more generated files than are named to git one by one
    Path(f"build/m{i}.pyc").write_text("junk")
Path("build/keep.txt").write_text("kept")
"""


def test_many_generated_files_are_left_out_too(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [{"id": "many", "description": "x"}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(MANY_JUNK_AGENT))

    assert res.returncode == 0, res.stderr
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    files = set(repo.git("ls-tree", "-r", "--name-only", branch).splitlines())
    assert {"app/health.py", "build/keep.txt"} <= files and not any(f.endswith(".pyc") for f in files)
    run_dir = next((repo.state_dir / "runs").iterdir())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    [excluded] = [e for e in events if e["kind"] == "leftovers-excluded"]
    assert len(excluded["files"]) == 250 and "build/m7.pyc" in excluded["files"]


# -- smaller ones --------------------------------------------------------------------------------------

def test_help_and_usage_lines_are_consistent(repo: Repo) -> None:
    for args, usage in [((), "wswarm [OPTIONS] COMMAND [ARGS]..."), (("start",), "wswarm start [OPTIONS] [GOAL]"),
                        (("plan",), "wswarm plan [OPTIONS] GOAL"), (("logs",), "wswarm logs [OPTIONS] TASK"),
                        (("status",), "wswarm status [OPTIONS] [RUN]"), (("hook", "install"),
                                                                        "wswarm hook install [OPTIONS]")]:
        res = wswarm(repo.path, *args, "--help", env={"COLUMNS": "120"})
        assert res.returncode == 0, res.stderr
        assert f"Usage: {usage}" in res.stdout, res.stdout
        assert "<bool>" not in res.stdout and "{" not in res.stdout, res.stdout


def test_scripts_test_help_prints_usage_and_runs_nothing() -> None:
    res = subprocess.run([str(ROOT / "scripts" / "test"), "--help"], capture_output=True, text=True, timeout=10)
    assert res.returncode == 0 and res.stdout.startswith("usage: scripts/test"), res.stdout + res.stderr


def test_an_untracked_wswarm_toml_alone_is_not_uncommitted_work(repo: Repo, tmp_path: Path,
                                                                agent_script: Any) -> None:
    repo.write("wswarm.toml", "[agents]\nconcurrency = 1\n")
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "x"}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(WRITE_TASK_FILE))
    assert res.returncode == 0 and "uncommitted changes" not in res.stderr, res.stderr
    repo.write("notes.txt", "mine")
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(WRITE_TASK_FILE))
    assert res.returncode == 0 and "uncommitted changes; they are not included" in res.stderr, res.stderr


def test_with_both_configurations_one_line_says_which_is_used(repo: Repo, tmp_path: Path,
                                                              agent_script: Any) -> None:
    repo.write("wswarm.toml", '[agents]\nconcurrency = 1\n[[gate.checks]]\nname = "ok"\nrun = "true"\n')
    repo.write("pyproject.toml", "[tool.wswarm.agents]\nconcurrency = 3\n")
    repo.commit_all("two configurations")
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "x"}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(WRITE_TASK_FILE))
    assert res.returncode == 0, res.stderr
    notes = [line for line in res.stderr.splitlines() if "[tool.wswarm]" in line]
    assert notes == ["config: wswarm.toml is used; the [tool.wswarm] table in pyproject.toml is ignored"]


def test_a_closed_output_pipe_neither_ends_nor_fails_the_run(repo: Repo, tmp_path: Path,
                                                             agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [{"id": "a", "description": "x"}, {"id": "b", "description": "x"}])
    slow = agent_script("time.sleep(1)\n" + WRITE_TASK_FILE)
    # `wswarm start … 2>&1 | head -1`: the reader takes one line and goes away.
    proc = subprocess.Popen([*WSWARM, "start", "--plan", str(plan), "--agent-cmd", slow], cwd=repo.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 0
    status = wswarm(repo.path, "status", "--json").json()
    assert status["state"] == "finished" and {t["status"] for t in status["tasks"]} == {"merged"}


def test_status_all_without_runs_says_so(repo: Repo) -> None:
    res = wswarm(repo.path, "status", "--all")
    assert res.returncode == 0 and res.stderr.startswith("no runs yet"), res.stderr


def test_logs_follow_of_a_task_not_started_says_it_is_waiting(repo: Repo, tmp_path: Path,
                                                              agent_script: Any) -> None:
    gate_file = tmp_path / "go"
    first = agent_script(f"""\
while not Path({str(gate_file)!r}).exists():
    time.sleep(0.05)
""" + WRITE_TASK_FILE)
    plan = write_plan(tmp_path / "plan.json", [{"id": "first", "description": "x", "command": first},
                                               {"id": "second", "description": "x", "dependencies": ["first"],
                                                "command": first}])
    run = subprocess.Popen([*WSWARM, "start", "--plan", str(plan)], cwd=repo.path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((repo.state_dir / "runs").glob("*/attempts/first/1/agent.log")):
            assert time.monotonic() < deadline and run.poll() is None
            time.sleep(0.05)
        follow = subprocess.Popen([*WSWARM, "logs", "second", "--follow"], cwd=repo.path,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert follow.stderr is not None
        # Silence would block a plain readline until the run ends, which waits for this test.
        ready, _, _ = select.select([follow.stderr], [], [], 30)
        said = follow.stderr.readline() if ready else "(nothing said)"
        gate_file.write_text("")
        follow.wait(timeout=60)
        assert run.wait(timeout=60) == 0
    finally:
        gate_file.write_text("")
        run.wait(timeout=60)
    assert said.startswith("task second has not started yet") and "waiting for its output" in said, said


def test_clean_mentions_the_slots_it_keeps(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [{"id": "t", "description": "x"}])
    assert wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script(WRITE_TASK_FILE)).returncode == 0
    res = wswarm(repo.path, "clean")
    assert res.returncode == 0, res.stderr
    assert "kept 1 reusable worktree slot for the next runs; remove them with: wswarm clean --slots" in res.stderr


@pytest.mark.parametrize("merge_ff, said", [
    (None, "git config merge.ff false"),
    ("false", "merge.ff = false here: every merge makes one"),
    ("only", "the hook never runs"),
])
def test_hook_install_says_fast_forward_merges_skip_it(repo: Repo, merge_ff: str | None, said: str) -> None:
    if merge_ff is not None:
        repo.git("config", "merge.ff", merge_ff)
    res = wswarm(repo.path, "hook", "install")
    assert res.returncode == 0, res.stderr
    assert "a fast-forward merge skips it" in res.stderr and said in res.stderr, res.stderr
