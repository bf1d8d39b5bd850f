"""The `claude` agent: the real Claude Code CLI (pinned, installed by scripts/install-claude into
.tools/claude) run headless against the scripted Messages API of tests/fakeapi.py.

The fake model's tool calls are carried out by the real CLI: files really appear in the task's
worktree, commands really run there, and the user's checkout stays as it was. The conftest
fixtures give every test a temporary HOME (the CLI writes ~/.claude) and point the CLI at the fake
server; the agent itself adds the variables that silence the CLI's other traffic.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conftest import Repo, alive, unavailable, wswarm, write_plan
from tests.fakeapi import FakeAnthropic, text, tool_use
from worktree_swarm.agents.base import AgentRequest, AgentResult, News
from worktree_swarm.agents.claude import ClaudeCodeAgent
from worktree_swarm.agents.claude_permit import answer, decide
from worktree_swarm.agents.claude_stream import parse_stream, tool_activity
from worktree_swarm.agents.registry import make_agent
from worktree_swarm.config import AgentConfig
from worktree_swarm.util.errors import UsageError
from worktree_swarm.plan import Task
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.util.types import RunId, Sha, TaskId

ROOT = Path(__file__).resolve().parents[1]
PINNED = ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture(scope="session")
def claude_cli() -> Path:
    """The pinned CLI, installed on first use when npm is there (a lock keeps parallel workers
    from installing it twice at once)."""
    if not PINNED.exists() and shutil.which("npm"):
        (ROOT / ".tools").mkdir(exist_ok=True)
        with open(ROOT / ".tools" / ".install-claude.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subprocess.run([str(ROOT / "scripts" / "install-claude")], check=True, timeout=900)
    if PINNED.exists():
        return PINNED
    found = shutil.which("claude")
    if found is None:
        unavailable("npm is not installed, so scripts/install-claude cannot install the Claude Code CLI")
    return Path(found)


def worktree(repo: Repo, tmp_path: Path, branch: str = "wswarm/t1") -> Path:
    path = tmp_path / "wt"
    repo.git("worktree", "add", "-q", "-b", branch, str(path))
    return path


def make_request(wt: Path, tmp_path: Path, prompt: str, activity: list[str], model: str | None = None) -> AgentRequest:
    """Attempt 1 of task t1 in WT, its files in an attempt folder outside every checkout."""
    adir = tmp_path / "attempt"
    adir.mkdir(exist_ok=True)
    (adir / "prompt.md").write_text(prompt)
    (adir / "task.json").write_text("{}")
    return AgentRequest(run_id=RunId("r1"), task=Task(id=TaskId("t1"), type="backend", description=prompt),
                        attempt=1, worktree=wt, base=Sha("0" * 40), prompt_path=adir / "prompt.md",
                        task_json_path=adir / "task.json", feedback_path=None, log_path=adir / "agent.log",
                        timeout=90, system_prompt="ROLE-SYSTEM-MARKER: you are a backend engineer.",
                        activity=activity.append, model=model)


def run_agent(cli: Path, wt: Path, tmp_path: Path, prompt: str, *, cancel: threading.Event | None = None,
              **spec: Any) -> tuple[AgentResult, AgentRequest, list[str]]:
    activity: list[str] = []
    request = make_request(wt, tmp_path, prompt, activity)
    agent = make_agent(AgentConfig(name="claude", kind="claude", binary=str(cli), **spec))
    agent.check_available()
    result = agent.run(request, cancel=cancel or threading.Event())
    return result, request, activity


def stream_result(request: AgentRequest) -> dict[str, Any]:
    lines = (request.log_path.parent / "agent.stream.jsonl").read_text().splitlines()
    return next(json.loads(line) for line in lines if json.loads(line)["type"] == "result")


# -- the real CLI, one attempt at a time ---------------------------------------------------------

def test_write_and_bash_change_the_worktree_and_not_the_users_checkout(
        claude_cli: Path, fake_api: FakeAnthropic, repo: Repo, tmp_path: Path) -> None:
    wt = worktree(repo, tmp_path)
    fake_api.on("TASK-WRITE-RUN", text("Adding the module."),
                tool_use("Write", {"file_path": str(wt / "app" / "hello.py"), "content": "X = 1\n"}))
    fake_api.on("File created", tool_use("Bash", {
        "command": 'printf "%s " "$WSWARM_TASK_ID" > ran.txt && git rev-parse --abbrev-ref HEAD >> ran.txt',
        "description": "record where it runs"}))
    fake_api.on("Bash completed", text("Added app/hello.py and ran.txt."))
    before = repo.git("status", "--porcelain", "--untracked-files=all")

    result, request, activity = run_agent(claude_cli, wt, tmp_path, "TASK-WRITE-RUN: add app/hello.py",
                                          model="claude-sonnet-5-5", max_turns=8)

    assert result.ok, result.error
    assert (wt / "app" / "hello.py").read_text() == "X = 1\n"
    assert (wt / "ran.txt").read_text() == "t1 wswarm/t1\n"      # the WSWARM_* contract, on its branch
    assert repo.git("status", "--porcelain", "--untracked-files=all") == before == ""
    assert not (repo.path / "ran.txt").exists() and repo.git("branch", "--show-current") == "main"
    # The outcome and what it cost, as the CLI reported them.
    reported = stream_result(request)
    assert result.summary == "Added app/hello.py and ran.txt."
    assert result.turns == reported["num_turns"] == 3
    assert result.session_id == reported["session_id"] and UUID.match(result.session_id or "")
    assert result.cost_usd == reported["total_cost_usd"] > 0
    assert (result.input_tokens, result.output_tokens) == (300, 150)     # 3 scripted replies of 100 / 50
    assert result.model == "claude-sonnet-5-5" and result.exit_code == 0
    assert activity == ["Write app/hello.py",
                        'Bash: printf "%s " "$WSWARM_TASK_ID" > ran.txt && git rev-parse --abbrev-ref HEAD >> ran.txt']
    # What the CLI sent: our prompt as the user's message, the role in the system prompt, our model.
    first = fake_api.messages()[0]
    assert "TASK-WRITE-RUN: add app/hello.py" in first.last_user_text()
    assert "ROLE-SYSTEM-MARKER" in json.dumps(first.body.get("system"))
    assert first.body["model"] == "claude-sonnet-5-5"
    log = request.log_path.read_text()
    assert "[tool] Write app/hello.py" in log and "[done] ok (success) · 3 turns" in log
    assert os.environ["ANTHROPIC_API_KEY"] not in log + request.log_path.with_name("agent.stream.jsonl").read_text()


def test_a_write_outside_the_worktree_is_refused(claude_cli: Path, fake_api: FakeAnthropic, repo: Repo,
                                                 tmp_path: Path) -> None:
    wt = worktree(repo, tmp_path)
    escape = repo.path / "escaped.txt"
    fake_api.on("TASK-ESCAPE", tool_use("Write", {"file_path": str(escape), "content": "out\n"}))
    fake_api.on("outside your worktree", text("I was not allowed to write there."))

    result, request, activity = run_agent(claude_cli, wt, tmp_path, "TASK-ESCAPE")

    assert not escape.exists() and repo.git("status", "--porcelain") == ""
    assert activity == [f"Write {escape}"]
    # The refusal (claude_permit's) went back to the model as a tool error; the transcript says so.
    refusal = fake_api.messages()[1].last_user_text()
    assert f"{escape} is outside your worktree {wt}" in refusal
    assert "1 tool call(s) were refused permission: Write" in request.log_path.read_text()
    assert result.ok and result.summary == "I was not allowed to write there."


def test_a_worktree_under_the_git_dir_is_editable_but_its_git_file_is_not(
        claude_cli: Path, fake_api: FakeAnthropic, repo: Repo, tmp_path: Path) -> None:
    # wswarm's real layout: the CLI alone treats every path under .git/ as sensitive and refuses
    # to edit it; claude_permit answers for the worktree.
    wt = repo.state_dir / "worktrees" / "r1--t1--1"
    repo.git("worktree", "add", "-q", "-b", "wswarm/t1", str(wt))
    fake_api.on("TASK-UNDER-GIT", tool_use("Read", {"file_path": str(wt / "app" / "core.py")}))
    fake_api.on("VALUE = 1", tool_use("Edit", {"file_path": str(wt / "app" / "core.py"),
                                               "old_string": "VALUE = 1", "new_string": "VALUE = 2"}))
    fake_api.on("updated successfully", tool_use("Write", {"file_path": str(wt / ".git"), "content": "x"}))
    fake_api.on("git's own data", text("Edited app/core.py."))

    result, _, activity = run_agent(claude_cli, wt, tmp_path, "TASK-UNDER-GIT")

    assert result.ok and result.summary == "Edited app/core.py.", result.summary
    assert (wt / "app" / "core.py").read_text() == "VALUE = 2\n"
    assert (wt / ".git").read_text().startswith("gitdir: ")
    assert activity == ["Read app/core.py", "Edit app/core.py", "Write .git"]
    assert repo.git("status", "--porcelain") == "" and (repo.path / "app" / "core.py").read_text() == "VALUE = 1\n"


def test_an_api_error_fails_the_attempt_with_the_clis_message(claude_cli: Path, fake_api: FakeAnthropic,
                                                              repo: Repo, tmp_path: Path) -> None:
    wt = worktree(repo, tmp_path)
    fake_api.on(None, status=400, error_type="invalid_request_error", error_message="scripted refusal", times=0)

    result, request, _ = run_agent(claude_cli, wt, tmp_path, "TASK-ERROR")

    assert not result.ok and result.exit_code == 1
    assert result.error is not None and "claude reported an error" in result.error
    assert "scripted refusal" in result.error
    assert stream_result(request)["is_error"] is True
    assert "[done] error" in result.summary        # the end of the transcript, for the retry's feedback


def test_max_turns_reached_fails_the_attempt(claude_cli: Path, fake_api: FakeAnthropic, repo: Repo,
                                             tmp_path: Path) -> None:
    wt = worktree(repo, tmp_path)
    fake_api.on("TASK-TURNS", tool_use("Bash", {"command": "echo one > one.txt", "description": "one"}))
    fake_api.on("Bash completed", tool_use("Bash", {"command": "echo two > two.txt", "description": "two"}))

    result, _, _ = run_agent(claude_cli, wt, tmp_path, "TASK-TURNS", max_turns=1)

    assert not result.ok and result.error == "claude reported an error: Reached maximum number of turns (1)"
    assert (wt / "one.txt").exists() and not (wt / "two.txt").exists()
    assert result.cost_usd > 0 and result.session_id is not None     # a failed attempt costs money too


def test_command_line_keeps_the_prompt_off_it_and_appends_configured_flags(tmp_path: Path) -> None:
    wt = tmp_path / "wt"
    request = make_request(wt, tmp_path, "--dangerously-skip-permissions; rm -rf /", [], model="claude-haiku-5-5")
    agent = ClaudeCodeAgent(AgentConfig(name="cc", kind="claude", model="claude-sonnet-5-5", max_turns=7,
                                        args=("--effort", "high")))
    argv = agent.argv("/opt/claude", request)
    assert argv[:2] == ["/opt/claude", "-p"] and request.prompt_path.read_text() not in argv
    assert argv[argv.index("--model") + 1] == "claude-haiku-5-5"          # the role's model wins
    assert argv[argv.index("--max-turns") + 1] == "7" and argv[-2:] == ["--effort", "high"]
    assert argv[argv.index("--append-system-prompt") + 1] == request.system_prompt
    assert "bypassPermissions" not in argv and "--dangerously-skip-permissions" not in argv
    permit = json.loads(argv[argv.index("--mcp-config") + 1])["mcpServers"]["wswarm"]
    assert permit["args"][-1] == str(wt) and permit["args"][-2].endswith("claude_permit.py")
    unset = ClaudeCodeAgent(AgentConfig(name="cc", kind="claude")).argv("claude", make_request(wt, tmp_path, "x", []))
    assert "--model" not in unset and "--max-turns" not in unset         # the CLI's own defaults


def test_without_a_key_or_a_login_the_clis_own_error_is_the_attempts_error(
        claude_cli: Path, fake_api: FakeAnthropic, repo: Repo, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    wt = worktree(repo, tmp_path)

    result, _, _ = run_agent(claude_cli, wt, tmp_path, "TASK-NO-KEY")

    assert not result.ok
    assert result.error is not None and "claude reported an error" in result.error
    assert "log" in result.error.lower()            # "Not logged in · Please run /login"
    assert fake_api.messages() == []


def test_cancel_kills_the_cli_and_the_commands_it_started(claude_cli: Path, fake_api: FakeAnthropic, repo: Repo,
                                                          tmp_path: Path) -> None:
    wt = worktree(repo, tmp_path)
    fake_api.on("TASK-SLEEP", tool_use("Bash", {"command": "echo $$ > sleeper.pid; sleep 120",
                                                "description": "wait", "timeout": 600000}))
    cancel = threading.Event()
    box: list[tuple[AgentResult, AgentRequest, list[str]]] = []
    runner = threading.Thread(target=lambda: box.append(run_agent(claude_cli, wt, tmp_path, "TASK-SLEEP",
                                                                   cancel=cancel)))
    runner.start()
    pidfile = wt / "sleeper.pid"
    deadline = time.monotonic() + 60
    while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pidfile.exists(), "the scripted command never started"
    shell = int(pidfile.read_text())
    cli_pid = int((tmp_path / "attempt" / "agent.pid").read_text().split()[0])
    cancel.set()
    runner.join(timeout=30)

    [(result, _, activity)] = box
    assert result.cancelled and not result.ok and result.error == "interrupted"
    assert activity == ["Bash: echo $$ > sleeper.pid; sleep 120"]
    assert result.session_id is not None          # known from the stream's start, even without a result
    assert not (tmp_path / "attempt" / "agent.pid").exists()
    deadline = time.monotonic() + 5
    while (alive(shell) or alive(cli_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(cli_pid) and not alive(shell)


# -- a missing CLI ---------------------------------------------------------------------------------

def test_a_missing_binary_is_a_usage_error_naming_the_fix(tmp_path: Path) -> None:
    for binary, where in ((str(tmp_path / "nope" / "claude"), "not an executable file"),
                          ("claude-not-installed-here", "not found on PATH")):
        agent = ClaudeCodeAgent(AgentConfig(name="cc", kind="claude", binary=binary))
        with pytest.raises(UsageError) as info:
            agent.check_available()
        assert where in info.value.message and binary in info.value.message
        assert info.value.hint is not None and "npm install -g @anthropic-ai/claude-code" in info.value.hint
        assert "[agents.cc] binary" in info.value.hint


def test_start_with_a_missing_binary_exits_2_before_making_anything(repo: Repo, tmp_path: Path) -> None:
    repo.write("wswarm.toml", '[agents]\ndefault = "claude"\n\n[agents.claude]\nbinary = "/nonexistent/claude"\n')
    repo.commit_all("configure the claude agent")
    plan = write_plan(tmp_path / "plan.json", [{"id": "t1", "type": "backend", "description": "Add a module",
                                                 "dependencies": [], "files": ["app/x.py"]}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--yes")

    assert res.returncode == 2, res.stderr
    first, *rest = res.stderr.strip().splitlines()
    assert "/nonexistent/claude" in first and "not an executable file" in first
    assert all(line.startswith("hint:") for line in rest) and len(rest) <= 1
    assert repo.branches() == [] and len(repo.git("worktree", "list").splitlines()) == 1
    assert not (repo.state_dir / "runs").exists() or list((repo.state_dir / "runs").iterdir()) == []


# -- a whole run -----------------------------------------------------------------------------------

def test_start_with_the_claude_agent_merges_the_clis_work(claude_cli: Path, fake_api: FakeAnthropic, repo: Repo,
                                                           tmp_path: Path) -> None:
    repo.write("wswarm.toml", f'[agents]\ndefault = "claude"\nmax_attempts = 1\n\n'
                              f'[agents.claude]\nbinary = "{claude_cli}"\nmodel = "claude-sonnet-5-5"\n')
    repo.commit_all("use the claude agent")
    fake_api.on("FULL-RUN-MARK", text("Writing the module."),
                tool_use("Write", {"file_path": "app/greet.py", "content": 'GREETING = "hello"\n'}))
    fake_api.on("File created", tool_use("Bash", {"command": "python3 -c 'import app.greet'",
                                                  "description": "check it imports"}))
    fake_api.on("Bash completed", text("Added app/greet.py with GREETING."))
    plan = write_plan(tmp_path / "plan.json", [{"id": "greet", "type": "backend", "dependencies": [],
                                                 "description": "Add the greeting module FULL-RUN-MARK",
                                                 "files": ["app/greet.py"]}])

    res = wswarm(repo.path, "start", "--plan", str(plan), "--yes")

    assert res.returncode == 0, res.stderr
    st = wswarm(repo.path, "status", "--json").json()
    [task] = st["tasks"]
    assert task["status"] == "merged"
    assert repo.show(st["integration_branch"], "app/greet.py") == 'GREETING = "hello"'
    assert task["cost_usd"] > 0 and st["cost_usd"] >= task["cost_usd"]
    run_dir = repo.state_dir / "runs" / st["run"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    doing = [e["text"] for e in events if e["kind"] == "agent-activity"]
    assert doing[:2] == ["Write app/greet.py", "Bash: python3 -c 'import app.greet'"]
    [finished] = [e for e in events if e["kind"] == "agent-finished"]
    assert finished["ok"] is True and UUID.match(finished["session_id"])
    assert finished["cost_usd"] == round(task["cost_usd"], 6) and finished["turns"] == 3
    store = RunStore.open(run_dir)
    try:
        [attempt] = store.attempts("greet")
        usage = json.loads(attempt.usage or "{}")
    finally:
        store.close()
    assert usage["session_id"] == finished["session_id"] and usage["model"] == "claude-sonnet-5-5"
    assert (usage["input_tokens"], usage["output_tokens"]) == (300, 150)
    # The summary handed on is the CLI's final text; the PR body shows the spend.
    assert "Added app/greet.py with GREETING." in (run_dir / "pr.md").read_text()
    assert "Model spend" in (run_dir / "pr.md").read_text()
    assert os.environ["ANTHROPIC_API_KEY"] not in (run_dir / "events.jsonl").read_text()


# -- the permission server ------------------------------------------------------------------------

def test_permit_allows_the_worktree_and_refuses_everything_else(tmp_path: Path) -> None:
    wt = tmp_path / "repo" / ".git" / "wswarm" / "worktrees" / "t1"
    (wt / "src").mkdir(parents=True)
    (wt / ".git").write_text("gitdir: elsewhere\n")
    (wt / "out").symlink_to(tmp_path)
    allowed: list[tuple[str, dict[str, Any]]] = [
        ("Write", {"file_path": str(wt / "src" / "new.py")}), ("Edit", {"file_path": "src/a.py"}),
        ("Glob", {"pattern": "*.py"}), ("NotebookEdit", {"notebook_path": "n.ipynb"}),
        ("Bash", {"command": "pytest -q"})]
    for tool, args in allowed:
        assert decide(tool, args, str(wt)) == {"behavior": "allow", "updatedInput": args}, (tool, args)
    refused: list[tuple[str, dict[str, Any], str]] = [
        ("Write", {"file_path": str(tmp_path / "repo" / "README.md")}, "outside your worktree"),
        ("Edit", {"file_path": "../t2/a.py"}, "outside your worktree"),
        ("Write", {"file_path": "out/escape.txt"}, "outside your worktree"),       # a symlink out
        ("Write", {"file_path": ".git"}, "git's own data"),
        ("Read", {"file_path": "src/../.git/config"}, "git's own data"),
        ("WebFetch", {"url": "https://example.com"}, "not available"),
        ("Write", {"file_path": 7}, "must be a path")]
    for tool, args, why in refused:
        verdict = decide(tool, args, str(wt))
        assert verdict["behavior"] == "deny" and why in verdict["message"], (tool, args, verdict)


def test_permit_speaks_enough_mcp() -> None:
    init = answer({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}},
                  "/w")
    assert init is not None and init["result"]["protocolVersion"] == "2025-11-25"
    assert answer({"jsonrpc": "2.0", "method": "notifications/initialized"}, "/w") is None
    listed = answer({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, "/w")
    assert listed is not None and [t["name"] for t in listed["result"]["tools"]] == ["approve"]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "approve", "arguments": {"tool_name": "Write", "input": {"file_path": "/etc/x"}}}}
    reply = answer(call, "/w")
    assert reply is not None and json.loads(reply["result"]["content"][0]["text"])["behavior"] == "deny"
    unknown = answer({"jsonrpc": "2.0", "id": "probe", "method": "server/discover"}, "/w")
    assert unknown is not None and unknown["error"]["code"] == -32601


# -- the stream parser, on a stream the real CLI wrote ---------------------------------------------

RECORDED = r"""
{"type": "system", "subtype": "init", "cwd": "/tmp/wt-rec", "session_id": "4209deaa-ae08-45ec-a00c-78128a4eba2a", "tools": ["Task", "Bash", "CronCreate", "CronDelete", "CronList", "Edit"], "model": "claude-sonnet-5-5", "permissionMode": "acceptEdits", "apiKeySource": "ANTHROPIC_API_KEY", "claude_code_version": "2.1.331"}
{"type": "assistant", "message": {"id": "msg_000003", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5", "content": [{"type": "text", "text": "I will add the module."}], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}, "parent_tool_use_id": null, "session_id": "4209deaa-ae08-45ec-a00c-78128a4eba2a"}
{"type": "assistant", "message": {"id": "msg_000003", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5", "content": [{"type": "tool_use", "id": "toolu_0001", "name": "Write", "input": {"file_path": "/tmp/wt-rec/app/hello.py", "content": "X = 1\n"}}], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}, "parent_tool_use_id": null, "session_id": "4209deaa-ae08-45ec-a00c-78128a4eba2a"}
{"type": "user", "message": {"role": "user", "content": [{"tool_use_id": "toolu_0001", "type": "tool_result", "content": "File created successfully at: /tmp/wt-rec/app/hello.py (file state is current in your context — no need to Read it back)"}]}, "parent_tool_use_id": null, "session_id": "4209deaa-ae08-45ec-a00c-78128a4eba2a", "tool_use_result": {"type": "create", "filePath": "/tmp/wt-rec/app/hello.py", "content": "X = 1\n", "structuredPatch": [], "originalFile": null, "userModified": false}}
{"type": "assistant", "message": {"id": "msg_000004", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5", "content": [{"type": "tool_use", "id": "toolu_0002", "name": "Bash", "input": {"command": "python3 -c 'import app.hello'", "description": "check"}}], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 100, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}, "parent_tool_use_id": null, "session_id": "4209deaa-ae08-45ec-a00c-78128a4eba2a"}
{"type": "user", "message": {"role": "user", "content": [{"tool_use_id": "toolu_0002", "type": "tool_result", "content": "(Bash completed with no output)", "is_error": false}]}, "parent_tool_use_id": null, "session_id": "4209deaa-ae08-45ec-a00c-78128a4eba2a", "tool_use_result": {"stdout": "", "stderr": "", "interrupted": false, "isImage": false, "noOutputExpected": false}}
{"type": "assistant", "message": {"id": "msg_000005", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5", "content": [{"type": "text", "text": "Added app/hello.py."}], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 120, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}, "parent_tool_use_id": null, "session_id": "4209deaa-ae08-45ec-a00c-78128a4eba2a"}
{"type": "result", "subtype": "success", "is_error": false, "duration_ms": 434, "duration_api_ms": 70, "num_turns": 3, "result": "Added app/hello.py.", "stop_reason": "end_turn", "session_id": "4209deaa-ae08-45ec-a00c-78128a4eba2a", "total_cost_usd": 0.0019399999999999999, "usage": {"input_tokens": 320, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 5, "output_tokens": 130}, "permission_denials": [], "terminal_reason": "completed", "api_error_status": null}
""".strip().splitlines()
SESSION = "4209deaa-ae08-45ec-a00c-78128a4eba2a"


def test_parser_reads_a_recorded_stream() -> None:
    state = parse_stream(RECORDED, cwd=Path("/tmp/wt-rec"))
    assert state.verdict(0) is None and not state.is_error
    assert (state.session_id, state.model, state.turns) == (SESSION, "claude-sonnet-5-5", 3)
    assert state.cost_usd == pytest.approx(0.00194)
    assert (state.input_tokens, state.output_tokens) == (335, 130)      # cache writes and reads count as input
    assert state.result_text == "Added app/hello.py." and state.tool_uses == 2


def test_parser_feeds_activity_and_a_readable_transcript_line_by_line() -> None:
    state = parse_stream([], cwd=Path("/tmp/wt-rec"))
    fed = [state.feed(line) for line in RECORDED]
    assert [a for f in fed for a in f.activity] == ["Write app/hello.py", "Bash: python3 -c 'import app.hello'"]
    log = [line for f in fed for line in f.log]
    assert log[0] == (f"[init] session {SESSION} · model claude-sonnet-5-5 · permission mode acceptEdits"
                      " · /tmp/wt-rec")
    assert log[1:6] == ["[claude] I will add the module.", "[tool] Write app/hello.py",
                        "  File created successfully at: /tmp/wt-rec/app/hello.py (file state is current in your "
                        "context — no need to Read it back)",
                        "[tool] Bash: python3 -c 'import app.hello'", "  (Bash completed with no output)"]
    assert log[-2:] == ["[done] ok (success) · 3 turns · 335 in / 130 out tokens · $0.0019 · 0.4 s",
                        "[summary] Added app/hello.py."]


def test_parser_failures_are_named() -> None:
    result = json.loads(RECORDED[-1])
    # An API error can come with subtype "success": is_error decides, and the CLI's words are kept.
    api_error = json.dumps(dict(result, is_error=True, result="API Error: 529 overloaded"))
    assert parse_stream([*RECORDED[:-1], api_error]).verdict(1) == "claude reported an error: API Error: 529 overloaded"
    max_turns = json.dumps(dict(result, is_error=True, subtype="error_max_turns", result=None,
                                errors=["Reached maximum number of turns (1)"]))
    assert parse_stream([max_turns]).verdict(1) == "claude reported an error: Reached maximum number of turns (1)"
    assert parse_stream(RECORDED).verdict(3) == "claude exited with status 3"
    assert parse_stream(RECORDED[:-1]).verdict(0) == "claude ended without a result (exit 0)"
    garbled = parse_stream([RECORDED[0], "Error: something broke", *RECORDED[1:]])
    assert garbled.verdict(0) == "claude printed a line that is not stream-json: 'Error: something broke'"


def test_parser_shows_api_retries_as_activity() -> None:
    retry = ('{"type":"system","subtype":"api_retry","attempt":2,"max_retries":10,"retry_delay_ms":1093,'
             '"error_status":401,"error":"authentication_failed","session_id":"s"}')
    fed = parse_stream([]).feed(retry)
    assert fed.activity == ["API error 401 (authentication_failed): retry 2 of 10"]
    assert fed.log == ["[api_retry] API error 401 (authentication_failed): retry 2 of 10 in 1.1 s"]


def test_without_a_result_the_spend_is_estimated_from_the_messages_seen() -> None:
    state = parse_stream(RECORDED[:-1])
    # msg_000003 reported twice (one line per content block) counts once: 100 + 100 + 120 in, 3 out.
    assert (state.input_tokens, state.output_tokens, state.turns) == (320, 3, None)
    assert state.cost_usd == pytest.approx((320 * 3.0 + 3 * 15.0) / 1_000_000)      # sonnet's list price
    assert state.session_id == SESSION


def test_tool_activity_lines() -> None:
    wt = Path("/w/t")
    assert tool_activity("Edit", {"file_path": "/w/t/src/a.py", "old_string": "x"}, cwd=wt) == "Edit src/a.py"
    assert tool_activity("Read", {"file_path": "/etc/passwd"}, cwd=wt) == "Read /etc/passwd"
    assert tool_activity("Write", {"file_path": "/real/t/b.py"}, cwd=wt, cli_cwd=Path("/real/t")) == "Write b.py"
    assert tool_activity("Bash", {"command": "pytest -q\necho done"}) == "Bash: pytest -q …"
    assert tool_activity("Grep", {"pattern": "TODO", "path": "/w/t/src"}, cwd=wt) == "Grep TODO in src"
    assert tool_activity("WebFetch", {"url": "https://example.com"}) == "WebFetch: https://example.com"
    assert tool_activity("TodoWrite", {"todos": []}) == "TodoWrite"
    assert len(tool_activity("Bash", {"command": "x" * 1000})) < 220


# -- news of work merged while the CLI runs -------------------------------------------------------

@pytest.mark.parametrize("model", ["claude-sonnet-5-5", "claude-sonnet-4-5"])
def test_news_sent_while_a_tool_runs_reaches_the_model_in_the_same_turn(
        model: str, claude_cli: Path, fake_api: FakeAnthropic, repo: Repo, tmp_path: Path) -> None:
    wt = worktree(repo, tmp_path)
    item = {"task": "pricing", "summary": "Moved prices to pricing.py", "files": ["pricing.py"], "head": "c0ffee" * 6}
    # The command runs until the test lets it go: once the CLI has taken the news in.
    fake_api.on("TASK-NEWS", tool_use("Bash", {"command": "until [ -e go ]; do sleep 0.05; done; echo WAITED",
                                               "description": "wait"}))
    fake_api.on("WAITED", text("Done, on top of pricing."))
    activity: list[str] = []
    request = make_request(wt, tmp_path, "TASK-NEWS: wait for the merge", activity, model=model)

    def release() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "[news] queued" not in request.log_path.read_text():
            time.sleep(0.05)
        (wt / "go").touch()

    releaser = threading.Thread(target=release, daemon=True)

    def on_activity(line: str) -> None:
        activity.append(line)
        if line.startswith("Bash:"):            # the merge lands while the command runs
            request.news.post(item)
            releaser.start()

    request = replace(request, activity=on_activity, news=News(tmp_path / "news.jsonl"))
    agent = make_agent(AgentConfig(name="claude", kind="claude", binary=str(claude_cli), max_turns=5))
    result = agent.run(request, cancel=threading.Event())
    releaser.join()

    assert result.ok, result.error
    assert result.summary == "Done, on top of pricing."
    told = "task 'pricing' was merged into the integration branch"
    [before] = [r for r in fake_api.messages() if r.rule == 0]
    [after] = [r for r in fake_api.messages() if r.rule == 1]
    assert told not in before.since_last_reply()
    assert told in after.since_last_reply() and f"git merge {item['head']}" in after.since_last_reply()
    # One turn, one result: stdin was closed at the result, and the CLI left by itself.
    stream = (request.log_path.parent / "agent.stream.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in stream].count("result") == 1
    assert result.turns == stream_result(request)["num_turns"] == 2
    label = f"'pricing' merged (integration head {item['head'][:12]})"
    assert f"News told to the model: {label}" in activity
    log = request.log_path.read_text()
    assert f"[news] sent: {label}" in log and f"[news] told to the model: {label}" in log


def test_parser_sums_the_turns_of_a_session_that_ran_a_turn_more_for_news() -> None:
    result = json.loads(RECORDED[-1])
    # A message read after a result starts a new turn: a second init and result. Usage and turns are
    # per turn; the cost is the session's so far.
    second = json.dumps(dict(result, num_turns=1, result="Merged their work too.",
                             total_cost_usd=result["total_cost_usd"] + 0.001,
                             usage={"input_tokens": 10, "output_tokens": 5}))
    state = parse_stream([*RECORDED, RECORDED[0], second])
    alone = parse_stream(RECORDED)
    assert state.turns == alone.turns + 1 == 4
    assert (state.input_tokens, state.output_tokens) == (alone.input_tokens + 10, alone.output_tokens + 5)
    assert state.cost_usd == pytest.approx(alone.cost_usd + 0.001)
    assert state.result_text == "Merged their work too." and state.verdict(0) is None
