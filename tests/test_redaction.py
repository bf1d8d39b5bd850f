"""Secrets never travel from an agent's output into the PR body, the state or other tasks' prompts."""

from __future__ import annotations


import pytest

from conftest import Repo, wswarm, write_plan
from worktree_swarm.util.redact import redact_secrets, secret_env_values

GITHUB = "gh" + "p_" + "Q7x9" * 9
ANTHROPIC = "sk-" + "ant-" + "api03-" + "Zr8kQ2" * 5


@pytest.mark.parametrize(("text", "kept", "gone"), [
    (f"token={GITHUB} ok", ["token=ghp_…[redacted] ok"], [GITHUB]),
    (f"key {ANTHROPIC}", ["key sk-a…[redacted]"], [ANTHROPIC]),
    ("AKIA" + "IOSFODNN7" + "EXAMPLE stays", ["AKIAIOSFODNN7EXAMPLE stays"], []),
    ("nothing secret here", ["nothing secret here"], []),
])
def test_redact_secrets_by_pattern(text: str, kept: list[str], gone: list[str]) -> None:
    out = redact_secrets(text)
    for piece in kept:
        assert piece in out
    for piece in gone:
        assert piece not in out


def test_known_values_are_redacted_longest_first() -> None:
    out = redact_secrets("a=hunter2hunter2 b=hunter2hunter2-extra", known=["hunter2hunter2", "hunter2hunter2-extra"])
    assert out == "a=[redacted] b=[redacted]"


def test_secret_env_values_pick_secret_names_only() -> None:
    env = {"MY_API_KEY": "abcdefgh123", "GITHUB_TOKEN": "t0k3n-value", "PATH": "/usr/bin:/bin",
           "SHORT_TOKEN": "abc", "DB_PASSWORD": "correct-horse"}
    assert sorted(secret_env_values(env)) == ["abcdefgh123", "correct-horse", "t0k3n-value"]


def test_agent_output_with_secrets_never_reaches_pr_state_or_dependents(repo: Repo, agent_script: object) -> None:
    agent = agent_script(f"""
tid = os.environ["WSWARM_TASK_ID"]
if tid == "leaky":
    print("using", os.environ["SERVICE_TOKEN"])
    print("found {GITHUB} in the old config")
Path(tid + ".txt").write_text(tid + "\\n")
print("done with", tid)
""")  # type: ignore[operator]
    write_plan(repo.path / "plan.json", [{"id": "leaky", "description": "print secrets"},
                                         {"id": "after", "description": "depends", "dependencies": ["leaky"]}])
    secret_value = "s3cr3t-service-token-value"
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent,
                 env={"SERVICE_TOKEN": secret_value})
    assert res.returncode == 0, res.stderr
    run_dir = next((repo.state_dir / "runs").iterdir())
    pr = (run_dir / "pr.md").read_text()
    assert "done with leaky" in pr and "[redacted]" in pr
    after_prompt = (run_dir / "attempts" / "after" / "1" / "prompt.md").read_text()
    assert "[redacted]" in after_prompt
    for path in [run_dir / "pr.md", run_dir / "state.db", run_dir / "events.jsonl",
                 run_dir / "attempts" / "after" / "1" / "prompt.md",
                 run_dir / "attempts" / "after" / "1" / "task.json"]:
        data = path.read_bytes()
        assert secret_value.encode() not in data, path
        assert GITHUB.encode() not in data, path
    status = wswarm(repo.path, "status", "--json")
    assert secret_value not in status.stdout and GITHUB not in status.stdout
    # The agent's own log keeps its words but not the keys: wswarm scrubs every log it keeps.
    log = (run_dir / "attempts" / "leaky" / "1" / "agent.log").read_text()
    assert "done with leaky" in log and "using [redacted]" in log
    assert secret_value not in log and GITHUB not in log
