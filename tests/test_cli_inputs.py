"""Bad input through the real command line: one line naming the culprit,
exit code 2, no traceback, and nothing created — no ref, no worktree, no state folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conftest import Repo, Result, git, wswarm, write_plan

GOOD_PLAN = json.dumps([{"id": "a", "description": "do a"}])
DIRECTORY = object()     # the plan path is a folder
MISSING = object()       # the plan path does not exist


def t(task_id: str, *deps: str, **extra: object) -> dict[str, object]:
    """A minimal valid task object."""
    return {"id": task_id, "description": f"do {task_id}", "dependencies": list(deps), **extra}


def plan_text(*tasks: dict[str, object]) -> str:
    return json.dumps(list(tasks))


def tree_files(root: Path) -> list[str]:
    """Every path below ROOT, relative; a new file or folder anywhere shows up here."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def snapshot(path: Path) -> dict[str, Any]:
    """What a rejected command must leave exactly as it was."""
    return {
        "refs": git(path, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": git(path, "rev-parse", "HEAD"),
        "head_ref": git(path, "symbolic-ref", "-q", "HEAD", check=False),
        "worktrees": git(path, "worktree", "list", "--porcelain"),
        "status": git(path, "status", "--porcelain", "--ignored", "--untracked-files=all"),
        "git_files": tree_files(path / ".git"),
    }


def assert_one_line_rejection(res: Result, expect: str) -> None:
    """Exit 2; the first stderr line is `wswarm: …` naming the culprit; at most a hint follows."""
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
    lines = res.stderr.splitlines()
    assert lines, res.stderr
    assert lines[0].startswith("wswarm: "), res.stderr
    assert expect in lines[0], res.stderr
    assert all(line.startswith("hint: ") for line in lines[1:]), res.stderr
    assert len(lines) <= 2, res.stderr
    assert res.stdout == ""


@dataclass(frozen=True)
class Bad:
    name: str
    expect: str                              # in the first stderr line; {plan}, {config}, {repo} are paths
    plan: object = GOOD_PLAN                 # str/bytes content, DIRECTORY or MISSING
    plan_name: str = "plan.json"
    args: tuple[str, ...] = ()
    config: str | None = None                # wswarm.toml in the repository root
    agent_cmd: bool = True                   # pass --agent-cmd with a real script


HUGE_PLAN = json.dumps([{"id": "a", "description": "x" * (5 * 1024 * 1024 + 10)}])

BAD_INPUTS = [
    Bad("not-json", "{plan}: not valid JSON: Expecting", plan='[{"id": "a", '),
    Bad("not-toml", "{plan}: not valid TOML:", plan="[[tasks]\nid = 'a'\n", plan_name="plan.toml"),
    Bad("neither-json-nor-toml", "{plan}: neither valid JSON", plan="{{{", plan_name="plan.txt"),
    Bad("not-utf8", "{plan}: the plan file is not UTF-8 (bad byte at offset 9)",
        plan=b'[{"id": "\xff"}]'),
    Bad("empty-array", "{plan}: the plan has no tasks", plan="[]"),
    Bad("empty-tasks", "{plan}: the plan has no tasks", plan='{"tasks": []}'),
    Bad("other-top-level-key", "{plan}: unknown top-level key 'steps'", plan=json.dumps({"steps": [t("a")]})),
    Bad("duplicate-id", "{plan}: duplicate task id 'a'", plan=plan_text(t("a"), t("b"), t("a"))),
    Bad("case-only-duplicate-id", "{plan}: duplicate task id 'Build' (same as 'build' ignoring case)",
        plan=plan_text(t("build"), t("Build"))),
    Bad("duplicate-key", "{plan}: not valid JSON: key 'id' appears twice in one object",
        plan='[{"id": "a", "id": "b", "description": "x"}]'),
    Bad("unknown-dependency", "{plan}: task 'b' depends on unknown task 'aa'",
        plan=plan_text(t("a"), t("b", "aa"))),
    Bad("cycle", "{plan}: the plan has a cycle: a → b → a", plan=plan_text(t("a", "b"), t("b", "a"))),
    Bad("self-dependency", "{plan}: the plan has a cycle: a → a", plan=plan_text(t("a", "a"))),
    Bad("id-with-space", "{plan}: task id 'a b' cannot be part of a git branch name: it contains whitespace",
        plan=plan_text(t("a b"))),
    Bad("id-dotdot", "{plan}: task id 'a..b' cannot be part of a git branch name: it contains '..'",
        plan=plan_text(t("a..b"))),
    Bad("id-dash", "{plan}: task id '-x' cannot be part of a git branch name: it starts with '-'",
        plan=plan_text(t("-x"))),
    Bad("id-lock", "{plan}: task id 'x.lock' cannot be part of a git branch name: the part 'x.lock' ends with '.lock'",
        plan=plan_text(t("x.lock"))),
    Bad("id-newline", "{plan}: task id 'a\\nb' cannot be part of a git branch name: it contains whitespace",
        plan=plan_text(t("a\nb"))),
    Bad("id-colon", "{plan}: task id 'a:b' cannot be part of a git branch name: it contains ':'",
        plan=plan_text(t("a:b"))),
    Bad("dependencies-not-list", "{plan}: task 'b': 'dependencies' must be an array of strings, got a string",
        plan=plan_text(t("a"), {"id": "b", "description": "x", "dependencies": "a"})),
    Bad("files-absolute", "{plan}: task 'a': file pattern '/etc/passwd' is absolute",
        plan=plan_text(t("a", files=["src/*.py", "/etc/passwd"]))),
    Bad("files-dotdot", "{plan}: task 'a': file pattern 'src/../../x' contains a '..' component",
        plan=plan_text(t("a", files=["src/../../x"]))),
    Bad("description-missing", "{plan}: task 'a' has no 'description'", plan='[{"id": "a"}]'),
    Bad("description-number", "{plan}: task 'a': 'description' must be a string, got a number",
        plan='[{"id": "a", "description": 42}]'),
    Bad("unknown-field", "{plan}: task 'a' has unknown field 'owner'", plan=plan_text(t("a", owner="me"))),
    Bad("toml-wrong-type", "{plan}: task 'a': 'type' must be a string, got a boolean",
        plan='[[tasks]]\nid = "a"\ndescription = "x"\ntype = true\n', plan_name="plan.toml"),
    Bad("missing-plan-file", "{plan}: cannot read the plan file: No such file or directory", plan=MISSING),
    Bad("plan-is-directory", "{plan}: cannot read the plan file: Is a directory", plan=DIRECTORY),
    Bad("deeply-nested", "{plan}: not valid JSON: nested too deeply", plan="[" * 100_000),
    Bad("deeply-nested-toml", "{plan}: not valid TOML", plan="x = " + "[" * 100_000, plan_name="plan.toml"),
    Bad("huge-plan", "{plan}: the plan file is larger than 5 MB", plan=HUGE_PLAN),
    Bad("config-unknown-key", "{config}: unknown key gate.chekcs", config="[gate]\nchekcs = []\n"),
    Bad("config-check-without-run", "{config}: gate.checks[0] needs both `name` and `run`",
        config='[[gate.checks]]\nname = "tests"\n'),
    Bad("config-wrong-type", "{config}: agents.concurrency must be a whole number, not '2'",
        config='[agents]\nconcurrency = "2"\n'),
    Bad("config-bool-as-number", "{config}: agents.max_attempts must be a whole number, not True",
        config="[agents]\nmax_attempts = true\n"),
    Bad("config-default-agent-unknown", "{config}: agents.default names agent 'ghost', which is not configured",
        config='[agents]\ndefault = "ghost"\n'),
    Bad("base-unknown", "wswarm: 'nosuchref' does not name a commit in {repo}", args=("--base", "nosuchref")),
    Bad("no-agent", "no agent is configured, and there is none to choose", agent_cmd=False),
    Bad("agent-binary-missing", "agent program 'no-such-binary-xyz' is not installed (not found on PATH)",
        agent_cmd=False, args=("--agent-cmd", "no-such-binary-xyz --flag")),
    Bad("agent-binary-missing-after-assignment", "agent program 'no-such-binary-xyz' is not installed",
        agent_cmd=False, args=("--agent-cmd", "FOO=1 no-such-binary-xyz")),
    Bad("agent-cmd-unparsable", "agent command 'run \"half' cannot be parsed",
        agent_cmd=False, args=("--agent-cmd", 'run "half')),
    Bad("config-agent-binary-missing", "agent program 'no-such-binary-xyz' is not installed",
        agent_cmd=False, config='[agents]\ncommand = "no-such-binary-xyz --flag"\n'),
    Bad("task-agent-ghost", "task 'a' asks for agent 'ghost', which is not configured",
        plan=plan_text(t("a", agent="ghost"))),
    Bad("task-command-with-agent-ghost", "task 'a' asks for agent 'ghost', which is not configured",
        plan=plan_text(t("a", agent="ghost", command="true")), agent_cmd=False),
    Bad("task-command-binary-missing", "agent program 'no-such-binary-xyz' is not installed",
        plan=plan_text(t("a"), t("b", command="no-such-binary-xyz"))),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.name for c in BAD_INPUTS])
def test_bad_start_input_is_one_line_exit_2_and_creates_nothing(repo: Repo, tmp_path: Path, agent_script: Any,
                                                                 case: Bad, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a configured agent wswarm would choose claude on PATH or the built-in agent with a key.
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                                                if not (Path(d) / "claude").exists()))
    # The plan lives outside the repository, so the user's `git status` is the repository's alone.
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = plans / case.plan_name
    if case.plan is DIRECTORY:
        plan.mkdir()
    elif isinstance(case.plan, bytes):
        plan.write_bytes(case.plan)
    elif isinstance(case.plan, str):
        plan.write_text(case.plan, encoding="utf-8")
    else:
        assert case.plan is MISSING
    if case.config is not None:
        repo.write("wswarm.toml", case.config)
    args = ["start", "--plan", str(plan), *case.args]
    if case.agent_cmd:
        args += ["--agent-cmd", agent_script("Path('out.txt').write_text('x')\n")]
    before = snapshot(repo.path)

    res = wswarm(repo.path, *args)

    assert_one_line_rejection(res, case.expect.format(plan=plan, config=repo.path / "wswarm.toml", repo=repo.path))
    assert not repo.state_dir.exists()
    assert snapshot(repo.path) == before


def test_agents_zero_is_a_usage_error(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    plan = write_plan(tmp_path / "plan.json", [t("a")])
    before = snapshot(repo.path)
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agents", "0", "--agent-cmd", agent_script("pass\n"))
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert "Invalid value for '--agents'" in res.stderr
    assert not repo.state_dir.exists()
    assert snapshot(repo.path) == before


def test_a_goal_with_no_terminal_to_confirm_on_is_refused_before_planning(repo: Repo) -> None:
    before = snapshot(repo.path)
    res = wswarm(repo.path, "start", "some goal")
    assert_one_line_rejection(res, "a planned run needs your confirmation, and there is no terminal to ask on")
    assert res.stderr.splitlines()[1] == ('hint: pass --yes to run the plan unseen, or review it first: '
                                          'wswarm plan "GOAL" -o plan.json, then wswarm start --plan plan.json')
    assert not repo.state_dir.exists()
    assert snapshot(repo.path) == before


# -- where wswarm runs ------------------------------------------------------------------------


def test_outside_a_git_repository(tmp_path: Path, agent_script: Any) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    plan = write_plan(tmp_path / "plan.json", [t("a")])
    res = wswarm(plain, "start", "--plan", str(plan), "--agent-cmd", agent_script("pass\n"))
    assert_one_line_rejection(res, f"wswarm: {plain} is not inside a git repository")
    assert list(plain.iterdir()) == []


def test_a_repository_without_commits(tmp_path: Path, agent_script: Any) -> None:
    empty = tmp_path / "empty"
    git(tmp_path, "init", "-q", "-b", "main", str(empty))
    plan = write_plan(tmp_path / "plan.json", [t("a")])
    files = tree_files(empty)
    res = wswarm(empty, "start", "--plan", str(plan), "--agent-cmd", agent_script("pass\n"))
    assert_one_line_rejection(res, f"wswarm: the repository at {empty} has no commits yet")
    assert tree_files(empty) == files
    assert git(empty, "for-each-ref") == ""


def test_a_bare_repository_is_named_as_bare_and_left_alone(tmp_path: Path, agent_script: Any) -> None:
    # Found here: Repo.discover asked --show-toplevel in the same call, which fails in a bare
    # repository, so the user was told it was "not inside a git repository".
    bare = tmp_path / "bare.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    plan = write_plan(tmp_path / "plan.json", [t("a")])
    files = tree_files(bare)
    res = wswarm(bare, "start", "--plan", str(plan), "--agent-cmd", agent_script("pass\n"))
    assert_one_line_rejection(res, f"wswarm: {bare} is a bare repository")
    assert tree_files(bare) == files


def test_missing_git_identity_is_refused_with_a_hint(repo: Repo, tmp_path: Path, agent_script: Any,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "bare-home"
    home.mkdir()
    (home / ".gitconfig").write_text("")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(var, raising=False)
    # git otherwise guesses user@hostname on machines with a resolvable domain; this makes the
    # missing identity an error everywhere, as on a machine where the guess fails.
    repo.git("config", "user.useConfigOnly", "true")
    assert repo.git("var", "GIT_COMMITTER_IDENT", check=False) == ""
    plan = write_plan(tmp_path / "plan.json", [t("a")])
    before = snapshot(repo.path)
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", agent_script("pass\n"))
    assert_one_line_rejection(res, "git has no identity to commit with (user.name / user.email are not set)")
    assert res.stderr.splitlines()[1].startswith("hint: run: git config --global user.name")
    assert not repo.state_dir.exists()
    assert snapshot(repo.path) == before


# -- other commands with nothing to act on ------------------------------------------------------


@pytest.mark.parametrize("args", [("status",), ("status", "--json"), ("pr",), ("logs", "x"), ("clean",),
                                  ("resume",), ("status", "nosuchrun")],
                         ids=["status", "status-json", "pr", "logs", "clean", "resume", "status-run"])
def test_commands_in_a_repository_without_runs(repo: Repo, args: tuple[str, ...]) -> None:
    before = snapshot(repo.path)
    res = wswarm(repo.path, *args)
    assert_one_line_rejection(res, "wswarm: this repository has no wswarm runs yet")
    assert res.stderr.splitlines()[1] == "hint: start one with: wswarm start --plan plan.json"
    assert snapshot(repo.path) == before


WRITE_FILE_AGENT = """\
Path(os.environ["WSWARM_TASK_ID"] + ".txt").write_text(os.environ["WSWARM_TASK_DESCRIPTION"] + "\\n")
"""


def run_one_task(cwd: Path, tmp_path: Path, agent_script: Any) -> Result:
    plan = write_plan(tmp_path / "plan.json", [t("hello")])
    return wswarm(cwd, "start", "--plan", str(plan), "--agent-cmd", agent_script(WRITE_FILE_AGENT))


def integration_of(res: Result) -> str:
    lines = [line for line in res.stderr.splitlines() if line.startswith("integration branch: ")]
    assert len(lines) == 1, res.stderr
    return lines[0].removeprefix("integration branch: ")


def run_files(repo: Repo) -> list[str]:
    return tree_files(repo.state_dir / "runs")


def test_unknown_run_and_task_after_a_real_run(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    res = run_one_task(repo.path, tmp_path, agent_script)
    assert res.returncode == 0, res.stderr
    before = snapshot(repo.path), run_files(repo)
    (run_dir,) = (repo.state_dir / "runs").iterdir()

    status = wswarm(repo.path, "status", "nosuchrun")
    assert_one_line_rejection(status, "wswarm: no run named 'nosuchrun'")
    logs = wswarm(repo.path, "logs", "nosuchtask")
    assert_one_line_rejection(logs, f"wswarm: run {run_dir.name} has no task 'nosuchtask'")
    logs_run = wswarm(repo.path, "logs", "hello", "--run", "nosuchrun")
    assert_one_line_rejection(logs_run, "wswarm: no run named 'nosuchrun'")
    resume = wswarm(repo.path, "resume")
    assert_one_line_rejection(resume, f"wswarm: run {run_dir.name} has already finished; there is nothing to resume")
    pr_open = wswarm(repo.path, "pr", "--open")
    assert_one_line_rejection(pr_open, "wswarm: --open needs --push REMOTE")

    assert (snapshot(repo.path), run_files(repo)) == before
    # The good command still works: the task is known.
    assert wswarm(repo.path, "logs", "hello").returncode == 0


# -- unusual but valid repositories ---------------------------------------------------------------


def assert_run_merged_hello(cwd: Path, res: Result) -> None:
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    branch = integration_of(res)
    assert git(cwd, "show", f"{branch}:hello.txt") == "do hello"
    assert git(cwd, "log", "-1", "--format=%s", branch) == "wswarm: merge hello — do hello"
    assert git(cwd, "status", "--porcelain") == ""


def test_a_detached_head_repository_runs(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    first = repo.git("rev-parse", "HEAD")
    repo.write("second.txt", "2\n")
    repo.commit_all("second")
    repo.git("checkout", "-q", "--detach", first)

    res = run_one_task(repo.path, tmp_path, agent_script)

    assert_run_merged_hello(repo.path, res)
    branch = integration_of(res)
    assert repo.git("rev-parse", f"{branch}^1") == first          # the base is the detached HEAD
    assert repo.git("rev-parse", "HEAD") == first                 # still detached, where it was
    assert repo.git("symbolic-ref", "-q", "HEAD", check=False) == ""


def test_a_shallow_clone_runs(repo: Repo, tmp_path: Path, agent_script: Any) -> None:
    repo.write("second.txt", "2\n")
    tip = repo.commit_all("second")
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo.path}", str(shallow))
    assert git(shallow, "rev-parse", "--is-shallow-repository") == "true"

    res = run_one_task(shallow, tmp_path, agent_script)

    assert_run_merged_hello(shallow, res)
    assert git(shallow, "rev-parse", f"{integration_of(res)}^1") == tip
    assert git(shallow, "rev-parse", "HEAD") == tip
