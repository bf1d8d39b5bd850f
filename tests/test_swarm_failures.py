"""Attempts that fail, in whole runs: an agent that exits non-zero (its dependents are blocked,
the other tasks merge), passes its timeout (killed with its children), changes nothing, leaves its
branch, rewrites history or deletes its worktree."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import Repo, alive, events, git, idle_slots, run_dir, status, task, wait_for
from swarm_run import AgentScript, attempt_dir, by_id, make_agent, rec_env, recorded, start


# -- permanent agent failure ---------------------------------------------------------------------

def test_failed_task_blocks_dependents_while_others_merge(repo: Repo, agent_script: AgentScript,
                                                          rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        Path(f"app/{tid}.py").write_text("OK = 1\\n")
        print(f"wrote app/{tid}.py")
    """)
    broken = make_agent(agent_script, """
        print("cannot do this")
        sys.exit(3)
    """, name="broken.py")
    plan = [task("broken", "Do the impossible", command=broken),
            task("mid", "Build on it", dependencies=["broken"]),
            task("leaf", "Build on mid", dependencies=["mid"]),
            task("solo", "Independent work")]
    res = start(repo, tmp_path, plan, "--agent-cmd", cmd, "--max-attempts", "2", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    run = st["run"]
    assert res.stdout == str(run_dir(repo, st["run"]) / "pr.md") + "\n"
    assert f"run {run}: finished with failed or blocked tasks" in res.stderr
    tasks = by_id(st)
    assert {tid: (t["status"], t["attempts"], t["reason"]) for tid, t in tasks.items()} == {
        "broken": ("failed", 2, "the agent exited with status 3 (after 2 attempts)"),
        "mid": ("blocked", 0, "depends on 'broken', which failed"),
        "leaf": ("blocked", 0, "depends on 'mid', which blocked"),
        "solo": ("merged", 1, None),
    }
    blocked = [(e["task"], e["reason"]) for e in events(repo, st["run"]) if e["kind"] == "blocked"]
    assert blocked == [("mid", "depends on 'broken', which failed"), ("leaf", "depends on 'mid', which blocked")]
    assert (attempt_dir(repo, st, "broken", 2) / "agent.log").read_text() == "cannot do this\n"
    started = {e["task"] for e in events(repo, st["run"]) if e["kind"] == "attempt-started"}
    assert started == {"broken", "solo"}
    # The failed task's last worktree is kept, on its branch; the merged task's went back to the
    # pool of slots: idle, detached, clean.
    kept = Path(tasks["broken"]["worktree"])
    assert kept.parent == repo.state_dir / "slots" and kept.is_dir()
    assert git(kept, "symbolic-ref", "HEAD") == f"refs/heads/wswarm/{run}/tasks/broken/2"
    idle_slots(repo, kept=kept)
    assert not (repo.state_dir / "worktrees").exists() or not any((repo.state_dir / "worktrees").iterdir())
    assert repo.show(st["integration_branch"], "app/solo.py") == "OK = 1"
    pr = (run_dir(repo, st["run"]) / "pr.md").read_text()
    assert "1 of 4 tasks merged; clean-run ratio **1/4** (25%) merged on their first attempt." in pr
    assert "| `broken` | general | ❌ failed | 2 | 0 | +0 −0 |" in pr
    assert "| `mid` | general | ⛔ blocked | 0 | 0 | +0 −0 |" in pr
    assert "| `solo` | general | ✅ merged | 1 | 1 | +1 −0 |" in pr
    assert "- `broken` attempt 1: agent-failed — the agent exited with status 3" in pr
    assert (f"## Not merged\n\n"
            f"- `broken` failed: the agent exited with status 3 (after 2 attempts) "
            f"(kept for inspection: `wswarm/{run}/tasks/broken/2`)\n"
            f"- `mid` blocked: depends on 'broken', which failed\n"
            f"- `leaf` blocked: depends on 'mid', which blocked\n") in pr


# -- timeouts ------------------------------------------------------------------------------------

def test_timeout_kills_the_agent_and_its_children(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                                  tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        child = subprocess.Popen(["sleep", "60"])
        rec_path("pids").write_text(f"{os.getpid()} {child.pid}")
        print("started a child", flush=True)
        time.sleep(30)
        Path("app/late.py").write_text("LATE = 1\\n")
    """)
    started = time.monotonic()
    res = start(repo, tmp_path, [task("slow", "Take forever")], "--agent-cmd", cmd, "--timeout", "2",
                "--max-attempts", "1", env=rec_env(rec_dir))
    elapsed = time.monotonic() - started
    assert res.returncode == 1, res.stderr
    assert elapsed < 20
    st = status(repo)
    slow = by_id(st)["slow"]
    assert (slow["status"], slow["reason"]) == (
        "failed", "the agent passed its timeout of 2s and was killed (after 1 attempt)")
    assert [e["kind"] for e in events(repo, st["run"]) if e.get("task") == "slow"][-2:] == ["timeout", "failed"]
    assert (attempt_dir(repo, st, "slow", 1) / "agent.log").read_text() == "started a child\n"
    pids = [int(p) for p in recorded(rec_dir, "slow", 1, "pids").split()]
    wait_for(lambda: not any(alive(p) for p in pids), timeout=5, what="the agent and its child to be gone")
    assert repo.git("rev-parse", st["integration_branch"]) == st["base"]


# -- no-op attempts -----------------------------------------------------------------------------

def test_noop_attempt_is_requeued_then_failed(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                              tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        feedback = os.environ.get("WSWARM_FEEDBACK")
        record(feedback_text=Path(feedback).read_text() if feedback else None)
        print("looked around; nothing to do")
    """)
    res = start(repo, tmp_path, [task("idle", "Do nothing at all"), task("after", "Needs idle",
                                                                         dependencies=["idle"])],
                "--agent-cmd", cmd, "--max-attempts", "2", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    tasks = by_id(st)
    assert (tasks["idle"]["status"], tasks["idle"]["attempts"]) == ("failed", 2)
    assert tasks["idle"]["reason"] == "no-op: the agent changed nothing (after 2 attempts)"
    assert (tasks["after"]["status"], tasks["after"]["reason"]) == ("blocked", "depends on 'idle', which failed")
    assert recorded(rec_dir, "idle", 1)["feedback_text"] is None
    assert recorded(rec_dir, "idle", 2)["feedback_text"] == (
        "Your previous attempt changed no files. The task needs changes to the repository.")
    assert [e["attempt"] for e in events(repo, st["run"]) if e["kind"] == "no-op"] == [1, 2]
    assert repo.git("rev-parse", st["integration_branch"]) == st["base"]
    assert not any(e["kind"] == "merged" for e in events(repo, st["run"]))


def test_empty_commit_is_a_noop(repo: Repo, agent_script: AgentScript, rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        git("commit", "-q", "--allow-empty", "-m", "looked, changed nothing")
    """)
    res = start(repo, tmp_path, [task("empty", "Do nothing, but commit")], "--agent-cmd", cmd,
                "--max-attempts", "1", env=rec_env(rec_dir))
    st = status(repo)
    assert repo.git("rev-parse", st["integration_branch"]) == st["base"]
    assert by_id(st)["empty"]["status"] == "failed"
    assert "no-op" in by_id(st)["empty"]["reason"]
    assert res.returncode == 1


# -- agents that leave their branch ----------------------------------------------------------

def test_agent_that_switches_branch_fails(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                          tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        git("checkout", "-q", "-b", "other")
        Path("app/stray.py").write_text("STRAY = 1\\n")
    """)
    res = start(repo, tmp_path, [task("wander", "Stay put")], "--agent-cmd", cmd, "--max-attempts", "1",
                env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    wander = by_id(st)["wander"]
    assert wander["status"] == "failed"
    assert wander["reason"] == (f"the agent left its branch (HEAD is refs/heads/other, expected "
                                f"wswarm/{st['run']}/tasks/wander/1) (after 1 attempt)")
    assert repo.git("rev-parse", st["integration_branch"]) == st["base"]
    # Nothing was committed for it, on either branch.
    assert repo.git("rev-parse", "other") == st["base"]
    assert repo.git("rev-parse", wander["branch"]) == st["base"]


def test_agent_that_rewrites_history_fails(repo: Repo, agent_script: AgentScript, rec_dir: Path,
                                           tmp_path: Path) -> None:
    repo.write("app/core.py", "VALUE = 2\n")
    base = repo.commit_all("second")
    cmd = make_agent(agent_script, """
        git("reset", "-q", "--hard", "HEAD~1")
        Path("app/other.py").write_text("OTHER = 1\\n")
    """)
    res = start(repo, tmp_path, [task("rewrite", "Rewrite history")], "--agent-cmd", cmd, "--max-attempts", "1",
                env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    assert by_id(st)["rewrite"]["reason"] == ("the task branch no longer contains its starting commit "
                                              "(after 1 attempt)")
    assert repo.git("rev-parse", st["integration_branch"]) == base


def test_agent_that_deletes_its_worktree_fails_with_a_clear_reason(repo: Repo, agent_script: AgentScript,
                                                                   rec_dir: Path, tmp_path: Path) -> None:
    cmd = make_agent(agent_script, """
        import shutil
        shutil.rmtree(os.getcwd())
    """)
    res = start(repo, tmp_path, [task("vandal", "Delete everything")], "--agent-cmd", cmd,
                "--max-attempts", "1", env=rec_env(rec_dir))
    assert res.returncode == 1, res.stderr
    st = status(repo)
    assert by_id(st)["vandal"]["reason"] == "the agent deleted its worktree (after 1 attempt)"
