"""What a finished run reports: `status --json`, `logs` and `pr`, in whole runs."""

from __future__ import annotations

from pathlib import Path

from conftest import Repo, run_dir, status, task, wswarm
from swarm_run import AgentScript, agent_logs, attempt_dir, make_agent, rec_env, start


# -- status, logs, pr -------------------------------------------------------------------------

def test_status_json_logs_and_pr(repo: Repo, agent_script: AgentScript, rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        print("hello from the agent")
        print("second line")
        Path(f"app/{tid}.py").write_text("X = 1\\n")
    """)
    base = repo.git("rev-parse", "HEAD")
    res = start(repo, tmp_path, [task("hello", "Say hello", type="docs"), task("bye", "Say bye",
                                                                               dependencies=["hello"])],
                "--agent-cmd", cmd, env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    run = st["run"]
    assert {"run", "state", "base", "integration_branch", "tasks", "cost_usd"} <= set(st)
    assert (st["state"], st["base"], st["integration_branch"], st["cost_usd"]) == (
        "finished", base, f"wswarm/{run}/integration", 0)
    assert isinstance(st["cost_usd"], (int, float))
    assert run_dir(repo, st["run"]).is_dir()
    for t in st["tasks"]:
        assert {"id", "status", "attempts", "branch", "reason"} <= set(t)
    assert [{k: t[k] for k in ("id", "status", "attempts", "branch", "reason")} for t in st["tasks"]] == [
        {"id": "hello", "status": "merged", "attempts": 1, "branch": f"wswarm/{run}/tasks/hello/1", "reason": None},
        {"id": "bye", "status": "merged", "attempts": 1, "branch": f"wswarm/{run}/tasks/bye/1", "reason": None},
    ]
    assert agent_logs(repo, "hello") == "==> attempt 1: agent.log <==\nhello from the agent\nsecond line\n"
    assert (attempt_dir(repo, st, "hello", 1) / "agent.log").read_text() == "hello from the agent\nsecond line\n"
    pr_md = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert res.stdout == str(run_dir(repo, st["run"]) / "pr.md") + "\n"
    pr = wswarm(repo.path, "pr")
    assert pr.returncode == 0, pr.stderr
    assert pr.stdout.rstrip("\n") == pr_md.rstrip("\n")
    assert pr_md.startswith("# wswarm: plan (2/2 tasks)\n")
    assert "| `hello` | docs | ✅ merged | 1 | 1 | +1 −0 |" in pr_md
    assert "### `hello` — Say hello\n\n```\nhello from the agent\nsecond line\n```" in pr_md
    # Selecting the run explicitly gives the same data.
    assert wswarm(repo.path, "status", run, "--json").json() == st
    unknown = wswarm(repo.path, "logs", "nope")
    assert unknown.returncode == 2
    assert f"run {run} has no task 'nope'" in unknown.stderr


def test_pr_and_logs_print_text_verbatim(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                         tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        print("kept rows[:x:] as is")
        print("col1\\tcol2")
        Path("app/text.py").write_text("X = 1\\n")
    """)
    res = start(repo, tmp_path, [task("text", "Handle the :x: and :thumbs_up: cases")], "--agent-cmd", cmd,
                env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    st = status(repo)
    pr_md = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert wswarm(repo.path, "pr").stdout.rstrip("\n") == pr_md.rstrip("\n")
    log = (attempt_dir(repo, st, "text", 1) / "agent.log").read_text()
    assert agent_logs(repo, "text") == "==> attempt 1: agent.log <==\n" + log
