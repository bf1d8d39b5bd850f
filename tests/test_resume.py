"""Interrupted runs: Ctrl-C, SIGTERM and SIGKILL mid-run, then `wswarm resume`."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest

from conftest import (WSWARM, Repo, agent_pid_recorded, alive, assert_cleans_up, events, idle_slots, run_dir, status,
                      wait_for, wswarm, write_plan)

# Each task appends its id to its own file; "slow" tasks wait long enough to be interrupted, and
# record their pid so the test can prove no agent outlives the orchestrator.
AGENT = """
tid = os.environ["WSWARM_TASK_ID"]
Path(os.environ["PIDS"], tid + "-" + os.environ["WSWARM_ATTEMPT"]).write_text(str(os.getpid()))
print("working on", tid, flush=True)
if tid.startswith("slow") and not Path(os.environ["PIDS"], "go").exists():
    time.sleep(60)
Path("out").mkdir(exist_ok=True)
Path("out", tid + ".txt").write_text(tid + "\\n")
"""

PLAN = [
    {"id": "first", "description": "quick one"},
    {"id": "slow-a", "description": "slow one", "dependencies": ["first"]},
    {"id": "slow-b", "description": "another slow one", "dependencies": ["first"]},
    {"id": "last", "description": "after both", "dependencies": ["slow-a", "slow-b"]},
]


def statuses(repo: Repo) -> dict[str, str]:
    tasks = status(repo)["tasks"]
    assert isinstance(tasks, list)
    return {t["id"]: t["status"] for t in tasks}


def start_in_background(repo: Repo, agent: str, pids: Path) -> subprocess.Popen[str]:
    write_plan(repo.path / "plan.json", PLAN)
    env = dict(os.environ, PIDS=str(pids))
    return subprocess.Popen([*WSWARM, "start", "--plan", "plan.json", "--agent-cmd", agent, "--agents", "2"],
                            cwd=repo.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def running(repo: Repo, pids: Path, task_id: str) -> bool:
    """The task's first agent has written its pid, and the orchestrator has recorded it too."""
    own = pids / f"{task_id}-1"
    return own.exists() and own.read_text() != "" and agent_pid_recorded(repo, task_id)


def agent_pids(pids: Path) -> list[int]:
    return [int(p.read_text()) for p in pids.iterdir() if p.name != "go" and p.read_text()]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_state_kills_agents_and_resume_finishes(repo: Repo, agent_script: object, tmp_path: Path,
                                                                sig: signal.Signals) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    agent = agent_script(AGENT)  # type: ignore[operator]
    proc = start_in_background(repo, agent, pids)
    wait_for(lambda: all(running(repo, pids, task) for task in ("slow-a", "slow-b")), what="both slow agents running")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "wswarm resume" in err
    data = status(repo)
    assert data["state"] == "interrupted"
    assert statuses(repo) == {"first": "merged", "slow-a": "pending", "slow-b": "pending", "last": "pending"}
    wait_for(lambda: not any(alive(pid) for pid in agent_pids(pids)), timeout=10)
    # Interrupted attempts leave no worktree behind: their slots are back in the pool, clean.
    assert len(idle_slots(repo)) == 2

    (pids / "go").write_text("")
    res = wswarm(repo.path, "resume", env={"PIDS": str(pids)})
    assert res.returncode == 0, res.stderr
    assert statuses(repo) == {"first": "merged", "slow-a": "merged", "slow-b": "merged", "last": "merged"}
    branch = str(status(repo)["integration_branch"])
    assert sorted(repo.git("ls-tree", "--name-only", f"{branch}:out").split()) == [
        "first.txt", "last.txt", "slow-a.txt", "slow-b.txt"]
    # `first` ran once; the interrupted tasks got a second attempt that did not count as a failure.
    assert repo.git("rev-list", "--count", "--merges", "--first-parent", branch) == "4"
    tasks = {t["id"]: t for t in status(repo)["tasks"]}
    assert tasks["first"]["attempts"] == 1 and tasks["slow-a"]["attempts"] == 2


def test_sigkill_never_leaves_a_running_status(repo: Repo, agent_script: object, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = start_in_background(repo, agent_script(AGENT), pids)  # type: ignore[operator]
    wait_for(lambda: all(running(repo, pids, task) for task in ("slow-a", "slow-b")), what="both slow agents running")
    proc.kill()
    proc.communicate(timeout=10)
    data = status(repo)
    assert data["state"] == "interrupted"
    assert "running" not in statuses(repo).values()
    reasons = {t["id"]: t["reason"] for t in data["tasks"]}
    assert "interrupted while running" in str(reasons["slow-a"])
    orphans = agent_pids(pids)
    assert any(alive(pid) for pid in orphans)   # a SIGKILLed orchestrator cannot stop its agents
    (pids / "go").write_text("")
    res = wswarm(repo.path, "resume", env={"PIDS": str(pids)})
    assert res.returncode == 0, res.stderr
    assert not any(alive(pid) for pid in orphans)   # resume did
    assert set(statuses(repo).values()) == {"merged"}
    # What a task merged before the kill did reaches its dependents as it would have without one.
    told = json.loads((run_dir(repo) / "attempts" / "last" / "1" / "task.json").read_text())
    assert {d["id"]: d["files"] for d in told["dependencies"]} == {
        "first": ["out/first.txt"], "slow-a": ["out/slow-a.txt"], "slow-b": ["out/slow-b.txt"]}
    assert_cleans_up(repo)


def test_a_merge_recorded_in_git_but_not_in_state_is_not_merged_twice(repo: Repo, agent_script: object,
                                                                      tmp_path: Path) -> None:
    """The orchestrator died after moving the integration branch and before writing "merged"."""
    pids = tmp_path / "pids"
    pids.mkdir()
    (pids / "go").write_text("")
    write_plan(repo.path / "plan.json", PLAN)
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent_script(AGENT),  # type: ignore[operator]
                 env={"PIDS": str(pids)})
    assert res.returncode == 0, res.stderr
    db = sqlite3.connect(run_dir(repo) / "state.db")
    with db:
        db.execute("UPDATE run SET state = 'running'")
        db.execute("UPDATE tasks SET status = 'merging', merge_commit = NULL WHERE id = 'last'")
        db.execute("UPDATE attempts SET outcome = 'gated' WHERE task_id = 'last'")
    db.close()
    branch = str(status(repo)["integration_branch"])
    before = repo.git("rev-parse", branch)
    res = wswarm(repo.path, "resume", env={"PIDS": str(pids)})
    assert res.returncode == 0, res.stderr
    assert repo.git("rev-parse", branch) == before
    assert not (pids / "last-2").exists()
    last = next(t for t in status(repo)["tasks"] if t["id"] == "last")
    assert last["status"] == "merged" and last["merge_commit"] == before
    assert any(e["kind"] == "merged" and e.get("recovered") for e in events(repo))


def test_resume_refuses_a_finished_run_and_a_live_one(repo: Repo, agent_script: object, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = start_in_background(repo, agent_script(AGENT), pids)  # type: ignore[operator]
    wait_for(lambda: (pids / "slow-a-1").exists())
    res = wswarm(repo.path, "resume")
    assert res.returncode == 2
    assert "is being driven by another wswarm process" in res.stderr
    (pids / "go").write_text("")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    res = wswarm(repo.path, "resume", env={"PIDS": str(pids)})
    assert res.returncode == 0, res.stderr
    res = wswarm(repo.path, "resume")
    assert res.returncode == 2 and "already finished" in res.stderr
