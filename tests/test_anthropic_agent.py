"""The `anthropic` agent: the real SDK against the scripted Messages API of tests/fakeapi.py, its tools
acting on a real git worktree. What the model is told is read back from the requests the SDK sent.
"""

from __future__ import annotations

import json
import os
import socket
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Repo, wswarm, write_plan
from tests.fakeapi import FakeAnthropic, text, tool_use
from worktree_swarm.agents.base import AgentRequest, AgentResult
from worktree_swarm.agents.pricing import cost_usd, price_of
from worktree_swarm.agents.registry import make_agent
from worktree_swarm.agents.tool_loop import AnthropicAgent
from worktree_swarm.config import DEFAULT_AGENT_MODEL, AgentConfig
from worktree_swarm.util.errors import UsageError
from worktree_swarm.plan import Task
from worktree_swarm.util.types import RunId, Sha, TaskId

SECRET = "TOP-SECRET-OUTSIDE-0451"
KEY = "sk-ant-test-0123456789abcdef0123456789"          # what the fake_api fixture exports


@pytest.fixture
def wt(repo: Repo, tmp_path: Path) -> Path:
    path = tmp_path / "wt"
    repo.git("worktree", "add", "-q", "-b", "task", str(path))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    (path / "out-file").symlink_to(outside / "secret.txt")
    (path / "out-dir").symlink_to(outside, target_is_directory=True)
    return path


def run_agent(wt: Path, *, spec: AgentConfig | None = None, timeout: float = 60, system: str = "You code.",
              model: str | None = None, cancel: threading.Event | None = None,
              **agent_kw: Any) -> tuple[AgentResult, list[str], str]:
    """One attempt of the agent in WT: its result, its activity lines and its transcript."""
    adir = wt.parent / "attempt"
    adir.mkdir(exist_ok=True)
    (adir / "prompt.md").write_text("# Task `greet`\n\nAdd a greeting.\n")
    lines: list[str] = []
    request = AgentRequest(run_id=RunId("r1"), task=Task(TaskId("greet"), "general", "Add a greeting."),
                           attempt=1, worktree=wt, base=Sha("0" * 40), prompt_path=adir / "prompt.md",
                           task_json_path=adir / "task.json", feedback_path=None, log_path=adir / "agent.log",
                           timeout=timeout, activity=lines.append, system_prompt=system, model=model)
    agent = AnthropicAgent(spec or AgentConfig(name="anthropic", kind="anthropic"), **agent_kw)
    result = agent.run(request, cancel=cancel or threading.Event())
    return result, lines, request.log_path.read_text()


def tool_results(api: FakeAnthropic, n: int) -> list[dict[str, Any]]:
    """The tool_result blocks of the Nth request (what the model was told about its calls)."""
    content = api.messages()[n].body["messages"][-1]["content"]
    return [b for b in content if b["type"] == "tool_result"]


def result_text(block: dict[str, Any]) -> str:
    content = block["content"]
    return content if isinstance(content, str) else "".join(b["text"] for b in content)


def test_scripted_tool_calls_really_change_the_worktree(fake_api: FakeAnthropic, wt: Path, repo: Repo) -> None:
    fake_api.on(None, text("Reading first."), tool_use("read", {"path": "app/core.py"}), input_tokens=1000,
                output_tokens=40)
    fake_api.on(None, tool_use("edit", {"path": "app/core.py", "old_string": "VALUE = 1", "new_string": "VALUE = 2"}),
                tool_use("write", {"path": "app/greet.py", "content": "def greet():\n    return 'hi'\n"}),
                input_tokens=1200, output_tokens=60)
    fake_api.on(None, tool_use("run", {"argv": ["python3", "-c", "import app.greet as g; print(g.greet())"]}),
                input_tokens=1300, output_tokens=30)
    fake_api.on("exit status 0\nhi", text("Added app/greet.py and bumped VALUE."), input_tokens=1400,
                output_tokens=20)
    result, lines, log = run_agent(wt, spec=AgentConfig(name="anthropic", kind="anthropic", max_tokens=4096))

    assert result.ok, result.error
    assert (wt / "app" / "greet.py").read_text() == "def greet():\n    return 'hi'\n"
    assert (wt / "app" / "core.py").read_text() == "VALUE = 2\n"
    assert repo.git("status", "--porcelain") == ""                     # the user's checkout is untouched
    assert result.summary == "Added app/greet.py and bumped VALUE."
    assert lines == ["Read app/core.py", "Edit app/core.py", "Write app/greet.py",
                     "Run: python3 -c 'import app.greet as g; print(g.greet())'"]
    assert (result.turns, result.input_tokens, result.output_tokens) == (4, 4900, 150)
    assert result.model == DEFAULT_AGENT_MODEL
    assert result.cost_usd == pytest.approx(cost_usd(DEFAULT_AGENT_MODEL, input_tokens=4900, output_tokens=150))
    assert result.cost_usd > 0

    sent = fake_api.messages()
    assert [m.rule for m in sent] == [0, 1, 2, 3]
    first = sent[0].body
    assert first["stream"] is True and first["model"] == DEFAULT_AGENT_MODEL and first["max_tokens"] == 4096
    assert first["system"][0]["text"] == "You code."
    assert first["messages"][0]["content"][0]["text"].startswith("# Task `greet`")
    assert [t["name"] for t in first["tools"]] == ["list", "read", "write", "edit", "search", "run"]
    [read] = tool_results(fake_api, 1)
    assert read["tool_use_id"] == sent[1].body["messages"][-2]["content"][1]["id"]
    assert (result_text(read), read["is_error"]) == ("     1\tVALUE = 1", False)
    assert [r["is_error"] for r in tool_results(fake_api, 2)] == [False, False]
    # The assistant turn is sent back with its tool calls, each answered by id.
    calls = [b for b in sent[2].body["messages"][-2]["content"] if b["type"] == "tool_use"]
    assert [c["id"] for c in calls] == [r["tool_use_id"] for r in tool_results(fake_api, 2)]
    assert "## summary\n\nAdded app/greet.py and bumped VALUE." in log and "> Write app/greet.py" in log


def test_escapes_are_refused_and_reported_back_to_the_model(fake_api: FakeAnthropic, wt: Path,
                                                            tmp_path: Path) -> None:
    attempts = [
        ("read", {"path": "../outside/secret.txt"}, "outside the worktree"),
        ("read", {"path": str(tmp_path / "outside" / "secret.txt")}, "outside the worktree"),
        ("read", {"path": "out-file"}, "symbolic link"),
        ("write", {"path": "out-file", "content": "pwned"}, "symbolic link"),
        ("write", {"path": "out-dir/new.txt", "content": "pwned"}, "symbolic link"),
        ("edit", {"path": "out-dir/secret.txt", "old_string": "TOP", "new_string": "pwned"}, "symbolic link"),
        ("search", {"pattern": "SECRET", "path": "out-dir"}, "symbolic link"),
        ("list", {"path": "/etc"}, "outside the worktree"),
        ("run", {"argv": ["cat", "../outside/secret.txt"]}, "outside the worktree"),
        ("write", {"path": ".git", "content": "gitdir: /elsewhere\n"}, ".git"),
    ]
    fake_api.on(None, *(tool_use(name, args) for name, args, _ in attempts))
    fake_api.on(None, text("I could not get out."))
    result, lines, log = run_agent(wt)

    assert result.ok and result.summary == "I could not get out." and len(lines) == len(attempts)
    answers = tool_results(fake_api, 1)
    assert len(answers) == len(attempts)
    for (name, args, reason), answer in zip(attempts, answers, strict=True):
        assert answer["is_error"] is True, (name, args)
        assert reason in result_text(answer), (name, args, result_text(answer))
    for request in fake_api.messages():
        assert SECRET not in json.dumps(request.body)
    assert SECRET not in log
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["secret.txt"]
    assert (tmp_path / "outside" / "secret.txt").read_text() == SECRET + "\n"
    assert (wt / ".git").read_text().startswith("gitdir: ") and "elsewhere" not in (wt / ".git").read_text()


def test_a_very_large_file_is_refused_and_the_model_told_how_to_read_it(fake_api: FakeAnthropic, wt: Path) -> None:
    (wt / "big.log").write_text("x" * 100 + "\n" + "y" * 400_000 + "\n")
    fake_api.on(None, tool_use("read", {"path": "big.log"}))
    fake_api.on("over the 256 KB read limit", tool_use("read", {"path": "big.log", "offset": 1, "limit": 1}))
    fake_api.on(None, text("Read the head."))
    result, _, _ = run_agent(wt)
    assert result.ok
    [refused] = tool_results(fake_api, 1)
    assert refused["is_error"] and "offset" in result_text(refused)
    [part] = tool_results(fake_api, 2)
    assert (part["is_error"], result_text(part)) == (False, "     1\t" + "x" * 100 + "\n[the file goes on: read on with offset=2]")
    assert all(len(json.dumps(m.body)) < 50_000 for m in fake_api.messages())


def test_an_api_error_fails_the_attempt_with_one_clear_line(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, status=529, error_type="overloaded_error", error_message="Overloaded")
    result, _, log = run_agent(wt, max_retries=0)
    assert not result.ok and result.error == "the Messages API answered 529 overloaded_error: Overloaded"
    assert "## stopped: the Messages API answered 529" in log
    assert KEY not in log


def test_a_transient_overload_is_retried_within_the_attempt(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, status=529, error_type="overloaded_error", error_message="Overloaded")
    fake_api.on(None, text("Done after a retry."))
    result, _, _ = run_agent(wt, max_retries=2)
    assert result.ok and result.summary == "Done after a retry." and len(fake_api.messages()) == 2


def test_a_silent_api_is_cut_off_at_the_attempts_time_limit(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, text("too late"), delay=10)
    started = time.monotonic()
    result, _, _ = run_agent(wt, timeout=1)
    assert not result.ok and result.timed_out and result.error == "the agent passed its timeout of 1s"
    assert time.monotonic() - started < 5 and len(fake_api.messages()) == 1    # no retry past the deadline


def test_a_cancel_stops_the_wait_between_retries(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, status=429, error_type="rate_limit_error", error_message="slow down", times=0)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result, _, log = run_agent(wt, cancel=cancel, max_retries=5)
    assert result.cancelled and time.monotonic() - started < 2
    assert "(the Messages API answered 429 rate_limit_error: slow down; retrying in" in log


def test_an_unreachable_api_is_named(wt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    result, _, _ = run_agent(wt, base_url=f"http://127.0.0.1:{port}", max_retries=0)
    assert not result.ok and result.error is not None
    assert result.error.startswith(f"cannot reach the Messages API at http://127.0.0.1:{port}")


@pytest.mark.parametrize("cut", ["drop", "empty"])
def test_a_reply_cut_off_mid_stream_is_retried_not_taken_as_done(fake_api: FakeAnthropic, wt: Path,
                                                                 cut: str) -> None:
    fake_api.on(None, text("Cut short."), cut=cut)
    fake_api.on(None, text("Done after the cut."))
    result, _, log = run_agent(wt, max_retries=2)
    assert result.ok and result.summary == "Done after the cut." and len(fake_api.messages()) == 2
    assert "the Messages API reply" in log


def test_a_reply_stalled_mid_stream_ends_the_attempt_at_its_time_limit(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, text("Stalled."), cut="stall")
    result, _, _ = run_agent(wt, timeout=1.5, max_retries=2)
    assert not result.ok and result.timed_out and len(fake_api.messages()) == 1


def test_an_outgrown_context_window_fails_the_attempt(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, text("Still working"), stop_reason="model_context_window_exceeded")
    result, _, _ = run_agent(wt)
    assert not result.ok and result.error is not None and "context window" in result.error


def test_the_turn_limit_stops_a_model_that_never_finishes(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, tool_use("list", {}), times=0)
    result, lines, _ = run_agent(wt, spec=AgentConfig(name="bot", kind="anthropic", max_turns=3))
    assert not result.ok and result.error == "the agent used its 3 turns without finishing " \
                                             "(raise max_turns in [agents.bot])"
    assert len(fake_api.messages()) == 3 and result.turns == 3 and lines == ["List ."] * 3
    assert result.input_tokens == 300 and result.cost_usd > 0       # a failed attempt's spend still counts


def test_the_time_limit_stops_a_long_command_and_the_loop(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, tool_use("run", {"argv": ["sleep", "30"], "timeout": 600}))
    result, _, log = run_agent(wt, timeout=1.5)
    assert not result.ok and result.timed_out and result.error == "the agent passed its timeout of 1.5s"
    # The command got what was left of the attempt's time, not the 600 s it asked for.
    assert "  ! timed out after 1." in log and len(fake_api.messages()) == 1


def test_a_cancel_stops_a_running_command(fake_api: FakeAnthropic, wt: Path) -> None:
    cancel = threading.Event()
    fake_api.on(None, tool_use("run", {"argv": ["sleep", "30"]}))
    threading.Timer(0.5, cancel.set).start()
    result, _, _ = run_agent(wt, cancel=cancel)
    assert not result.ok and result.cancelled and result.error == "interrupted"
    assert len(fake_api.messages()) == 1


def test_a_cut_reply_gets_its_calls_refused_and_the_model_continues(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, tool_use("write", {"path": "half.txt", "content": "par"}), stop_reason="max_tokens")
    fake_api.on(None, text("Done in smaller steps."))
    result, _, _ = run_agent(wt)
    assert result.ok and not (wt / "half.txt").exists()
    [answer] = tool_results(fake_api, 1)
    assert answer["is_error"] and "cut off at max_tokens" in result_text(answer)


def test_the_api_key_never_reaches_the_log_the_summary_or_a_command(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, text(f"My key is {KEY}."), tool_use("run", {"argv": ["env"]}))
    fake_api.on(None, text(f"Finished; key {KEY}"))
    result, lines, log = run_agent(wt, model="claude-haiku-5-5")
    assert result.ok and result.model == "claude-haiku-5-5"
    env_seen = result_text(tool_results(fake_api, 1)[0])
    assert "HOME=" in env_seen and KEY not in env_seen and "ANTHROPIC" not in env_seen
    assert KEY not in log and KEY not in result.summary and KEY not in "".join(lines)
    # The key went where it belongs: the request's credentials, and nowhere in a body.
    sent = fake_api.messages()[0]
    assert KEY in sent.headers.get("x-api-key", "") + sent.headers.get("authorization", "")


def test_prompt_caching_marks_the_system_prompt_and_the_newest_message(fake_api: FakeAnthropic, wt: Path) -> None:
    fake_api.on(None, tool_use("list", {}))
    run_agent(wt)
    for request in fake_api.messages():
        body = request.body
        assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
        assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        marks = json.dumps(body["messages"]).count("cache_control")
        assert marks == 1                               # the API allows four breakpoints in all


def test_models_are_priced_by_family_and_older_opus_at_its_higher_price() -> None:
    # A price too low would let --max-cost overshoot; older Opus models cost three times the newer ones.
    for old in ("claude-opus-4-1-20250805", "claude-opus-4-20250514", "claude-opus-4-0", "claude-3-opus-latest"):
        assert (price_of(old).input, price_of(old).output) == (15.0, 75.0), old
    assert (price_of("claude-opus-4-5-20251101").input, price_of("claude-opus-4-6").input) == (5.0, 5.0)
    assert (price_of("claude-sonnet-5-5").input, price_of("claude-haiku-4-5").input) == (3.0, 1.0)
    assert price_of("some-new-model").input == 15.0             # unknown: the highest, to stop early


def test_without_a_key_the_agent_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    agent = make_agent(AgentConfig(name="anthropic", kind="anthropic"))
    with pytest.raises(UsageError) as info:
        agent.check_available()
    assert "ANTHROPIC_API_KEY" in info.value.message
    assert info.value.hint is not None and "--plan" in info.value.hint and "--agent-cmd" in info.value.hint
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "token-from-a-gateway")
    agent.check_available()


def test_wswarm_start_with_the_anthropic_agent_merges_its_work(fake_api: FakeAnthropic, repo: Repo,
                                                               tmp_path: Path) -> None:
    repo.write("wswarm.toml", textwrap.dedent("""
        [agents]
        default = "anthropic"

        [[gate.checks]]
        name = "greeting"
        run = "test -f hello.txt"
    """))
    repo.commit_all("config")
    fake_api.on("Say hello", tool_use("write", {"path": "hello.txt", "content": "hello\n"}),
                tool_use("run", {"argv": ["sh", "-c", "env > env.txt"]}))
    fake_api.on("created hello.txt", text("Wrote hello.txt."))
    plan = write_plan(tmp_path / "plan.json", [{"id": "hello", "type": "docs", "description": "Say hello",
                                                "dependencies": [], "files": ["hello.txt"]}])
    res = wswarm(repo.path, "start", "--plan", str(plan))
    assert res.returncode == 0, res.stdout + res.stderr
    status = wswarm(repo.path, "status", "--json").json()
    assert [t["status"] for t in status["tasks"]] == ["merged"]
    assert repo.show(status["integration_branch"], "hello.txt") == "hello"
    # What a command could see went into the branch: no key among it.
    seen_env = repo.show(status["integration_branch"], "env.txt")
    assert "HOME=" in seen_env and "ANTHROPIC" not in seen_env and KEY not in seen_env
    assert status["cost_usd"] > 0
    run_dir = repo.state_dir / "runs" / status["run"]
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert {"kind": "agent-activity", "text": "Write hello.txt"}.items() <= next(
        e for e in events if e["kind"] == "agent-activity").items()
    # The docs role's system prompt went to the model.
    assert "documentation" in fake_api.messages()[0].body["system"][0]["text"]
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path
    assert os.environ["ANTHROPIC_API_KEY"] == KEY


# -- news of work merged while the agent runs -----------------------------------------------------

def test_news_posted_while_a_tool_runs_is_in_the_next_request_after_the_tool_results(
        fake_api: FakeAnthropic, wt: Path) -> None:
    from worktree_swarm.agents.base import News
    item = {"task": "pricing", "summary": "Moved prices to pricing.py", "files": ["pricing.py"], "head": "c0ffee" * 6}
    fake_api.on(None, tool_use("write", {"path": "a.txt", "content": "a\n"}))
    fake_api.on(None, tool_use("write", {"path": "b.txt", "content": "b\n"}))
    fake_api.on(None, text("Done, and I know about pricing."))
    adir = wt.parent / "attempt"
    adir.mkdir()
    (adir / "prompt.md").write_text("# Task `greet`\n")
    news = News(adir / "news.jsonl")
    lines: list[str] = []

    def activity(line: str) -> None:
        lines.append(line)
        if line == "Write a.txt":           # the merge lands while the first tool call runs
            news.post(item)

    request = AgentRequest(run_id=RunId("r1"), task=Task(TaskId("greet"), "general", "Add a greeting."),
                           attempt=1, worktree=wt, base=Sha("0" * 40), prompt_path=adir / "prompt.md",
                           task_json_path=adir / "task.json", feedback_path=None, log_path=adir / "agent.log",
                           timeout=60, activity=activity, news=news)
    result = AnthropicAgent(AgentConfig(name="anthropic", kind="anthropic")).run(request, cancel=threading.Event())

    assert result.ok, result.error
    sent = [m.body["messages"] for m in fake_api.messages()]
    told = News.text(item)
    assert told not in json.dumps(sent[0])
    # After the merge: the user message that answers the tool call carries the news after its result.
    last = sent[1][-1]
    assert last["role"] == "user" and [b["type"] for b in last["content"]] == ["tool_result", "text"]
    assert last["content"][1]["text"] == told and "git merge " + item["head"] in told
    assert [m["role"] for m in sent[2]] == ["user", "assistant", "user", "assistant", "user"]
    assert json.dumps(sent[2]).count("News while you work") == 1       # told once, not again each turn
    assert "## news\n\n" + told in request.log_path.read_text()
    assert f"News: 'pricing' merged (integration head {item['head'][:12]})" in lines
