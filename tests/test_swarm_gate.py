"""The gate in whole runs: a failing check's findings go back to the agent, whose next attempt fixes
them; a secret fails the gate and never reaches the integration branch, even when committed and
removed again.

The fake AWS key is assembled at run time: this file holds no literal that the gate's secret
patterns would match."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from conftest import Repo, events, run_dir, status, task, wswarm
from swarm_run import AgentScript, attempt_dir, by_id, git_rc, make_agent, rec_env, recorded, start


# -- gate failure fixed from feedback ----------------------------------------------------------

def test_gate_failure_is_fixed_from_feedback(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                             tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        feedback = os.environ.get("WSWARM_FEEDBACK")
        text = Path(feedback).read_text() if feedback else ""
        record(feedback_text=text or None)
        if attempt == 1:
            Path("app/core.py").write_text("VALUE = 2  # TODO tidy\\n")
        elif "TODO left in app/core.py" in text:
            Path("app/core.py").write_text("VALUE = 2\\n")
            print("removed the TODO the gate complained about")
        else:
            sys.exit(5)
    """)
    # A committed wswarm.toml: the gate check and the agent command both come from it.
    repo.write("wswarm.toml", textwrap.dedent(f"""
        [agents]
        command = {json.dumps(cmd)}

        [[gate.checks]]
        name = "no-todo"
        kind = "lint"
        run = "if grep -n TODO app/core.py; then echo 'TODO left in app/core.py'; exit 1; fi"
    """))
    repo.commit_all("configure wswarm")
    res = start(repo, tmp_path, [task("fix", "Set VALUE to 2", files=["app/core.py"])], env=rec_env(rec_dir))
    assert res.returncode == 0, res.stderr
    assert "uncommitted changes" not in res.stderr
    st = status(repo)
    assert (by_id(st)["fix"]["status"], by_id(st)["fix"]["attempts"]) == ("merged", 2)
    gate1 = json.loads((attempt_dir(repo, st, "fix", 1) / "gate.json").read_text())
    assert gate1["passed"] is False
    check = next(c for c in gate1["checks"] if c["name"] == "no-todo")
    assert (check["kind"], check["status"], check["note"]) == ("lint", "fail", "exit 1")
    assert check["output"] == "1:VALUE = 2  # TODO tidy\nTODO left in app/core.py"
    assert [c["status"] for c in gate1["checks"] if c["kind"] == "builtin"] == ["pass"] * 4
    gate2 = json.loads((attempt_dir(repo, st, "fix", 2) / "gate.json").read_text())
    assert gate2["passed"] is True
    assert {c["name"]: c["status"] for c in gate2["checks"]}["no-todo"] == "pass"
    feedback = recorded(rec_dir, "fix", 2)["feedback_text"]
    assert feedback == (attempt_dir(repo, st, "fix", 2) / "feedback.txt").read_text()
    assert feedback.startswith("gate FAILED: no-todo ✗")
    assert "--- no-todo (fail) ---\n1:VALUE = 2  # TODO tidy\nTODO left in app/core.py" in feedback
    assert recorded(rec_dir, "fix", 1)["feedback_text"] is None
    kinds = [(e["kind"], e.get("attempt")) for e in events(repo, st["run"]) if e.get("task") == "fix"]
    assert ("gate-failed", 1) in kinds and ("merged", 2) in kinds
    assert repo.show(st["integration_branch"], "app/core.py") == "VALUE = 2"
    pr = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert "- `fix` attempt 1: gate-failed — gate FAILED: no-todo ✗" in pr
    assert "clean-run ratio **0/1** (0%)" in pr


# -- secrets -----------------------------------------------------------------------------------

def _fake_aws_key() -> str:
    return "AK" + "IA" + "QX7RZ2LM" + "4N8PB6TW"


def test_secret_fails_the_gate_and_never_reaches_integration(repo: Repo, agent_script: AgentScript,
                                                             rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        if tid == "leak":
            key = "AK" + "IA" + "QX7RZ2LM" + "4N8PB6TW"
            Path("config").mkdir(exist_ok=True)
            Path("config/keys.py").write_text(f'AWS_ACCESS_KEY_ID = "{key}"\\n')
            print("wrote config/keys.py")
        else:
            Path(f"app/{tid}.py").write_text("OK = 1\\n")
    """)
    plan = [task("leak", "Add the deploy config", files=["config/*"]),
            task("dep1", "Use the config", dependencies=["leak"]),
            task("dep2", "Use dep1", dependencies=["dep1"]),
            task("ok", "Unrelated work")]
    res = start(repo, tmp_path, plan, "--agent-cmd", cmd, "--max-attempts", "2", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    key = _fake_aws_key()
    status_res = wswarm(repo.path, "status", "--json")
    st = status_res.json()
    tasks = by_id(st)
    assert tasks["leak"]["status"] == "failed" and tasks["leak"]["attempts"] == 2
    assert tasks["leak"]["reason"].startswith("gate FAILED: secrets ✗")
    assert tasks["leak"]["reason"].endswith("(after 2 attempts)")
    assert (tasks["dep1"]["status"], tasks["dep1"]["reason"]) == ("blocked", "depends on 'leak', which failed")
    assert (tasks["dep2"]["status"], tasks["dep2"]["reason"]) == ("blocked", "depends on 'dep1', which blocked")
    assert (tasks["dep1"]["attempts"], tasks["dep2"]["attempts"]) == (0, 0)
    assert tasks["ok"]["status"] == "merged"
    gate = json.loads((attempt_dir(repo, st, "leak", 1) / "gate.json").read_text())
    secrets = next(c for c in gate["checks"] if c["name"] == "secrets")
    assert (secrets["status"], secrets["note"]) == ("fail", "1 finding")
    assert secrets["output"] == "config/keys.py:1: possible AWS access key id: AKIA…"
    feedback = (attempt_dir(repo, st, "leak", 2) / "feedback.txt").read_text()
    assert "config/keys.py:1: possible AWS access key id: AKIA…" in feedback
    # The key itself is nowhere in what wswarm wrote, printed, or merged.
    assert key not in status_res.stdout
    assert key not in res.stdout + res.stderr
    for path in run_dir(repo, st["run"]).rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), path
    integration = st["integration_branch"]
    assert repo.git("ls-tree", "-r", "--name-only", integration).splitlines() == [
        "README.md", "app/__init__.py", "app/core.py", "app/ok.py"]
    assert key not in repo.git("log", "-p", integration)
    for n in (1, 2):
        leaked = f"wswarm/{st['run']}/tasks/leak/{n}"
        assert git_rc(repo, "merge-base", "--is-ancestor", leaked, integration) == 1


def test_secret_committed_then_removed_never_reaches_integration(repo: Repo, agent_script: AgentScript,
                                                                 rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        key = "AK" + "IA" + "QX7RZ2LM" + "4N8PB6TW"
        Path("app/keys.py").write_text(f'AWS_ACCESS_KEY_ID = "{key}"\\n')
        git("add", "-A")
        git("commit", "-q", "-m", "try with the real key")
        Path("app/keys.py").unlink()
        Path("app/deploy.py").write_text("KEY = None  # read from the environment\\n")
    """)
    res = start(repo, tmp_path, [task("sneaky", "Add the deploy code")], "--agent-cmd", cmd,
                "--max-attempts", "1", env=rec_env(rec_dir))
    st = status(repo)
    assert _fake_aws_key() not in repo.git("log", "-p", st["integration_branch"])
    assert res.returncode == 1
