"""Fault injection: the orchestrator is SIGKILLed at many points of a real run, then resumed.

Whatever the point, the final integration tree equals that of an uninterrupted run, no task is
merged twice, no agent outlives its orchestrator past the resume, and nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import WSWARM, Repo, agent_pid_recorded, alive, assert_cleans_up, events, wait_for, wswarm, write_plan

# Agents record their pid, take a moment, then write their own file; "b" builds on "a".
AGENT = """
tid, n = os.environ["WSWARM_TASK_ID"], os.environ["WSWARM_ATTEMPT"]
Path(os.environ["PIDS"], f"{tid}-{n}").write_text(str(os.getpid()))
time.sleep(float(os.environ.get("AGENT_SLEEP", "0.4")))
Path("out").mkdir(exist_ok=True)
Path("out", tid + ".txt").write_text(tid + "\\n")
print("wrote out/" + tid + ".txt")
"""
PLAN = [{"id": "a", "description": "a"}, {"id": "b", "description": "b", "dependencies": ["a"]},
        {"id": "c", "description": "c"}, {"id": "d", "description": "d", "dependencies": ["b", "c"]}]
CHECK = '[[gate.checks]]\nname = "slow-check"\nrun = "sleep 0.3"\n'


def prepare(repo: Repo, tmp_path: Path) -> tuple[dict[str, str], Path]:
    repo.write("wswarm.toml", CHECK)
    repo.commit_all("config")
    write_plan(repo.path / "plan.json", PLAN)
    pids = tmp_path / "pids"
    pids.mkdir()
    return {"PIDS": str(pids)}, pids


def integration(repo: Repo) -> str:
    return str(wswarm(repo.path, "status", "--json").json()["integration_branch"])


def merges_per_task(repo: Repo, branch: str) -> dict[str, int]:
    subjects = repo.git("log", "--first-parent", "--merges", "--format=%s", branch).splitlines()
    counts: dict[str, int] = {}
    for s in subjects:
        task = s.removeprefix("wswarm: merge ").split(" — ")[0]
        counts[task] = counts.get(task, 0) + 1
    return counts


def assert_final_tree(repo: Repo, branch: str) -> None:
    """What an uninterrupted run produces: the base plus exactly each task's own file."""
    base = wswarm(repo.path, "status", "--json").json()["base"]
    assert repo.git("diff", "--name-status", base, branch).splitlines() == [
        "A\tout/a.txt", "A\tout/b.txt", "A\tout/c.txt", "A\tout/d.txt"]
    for task in "abcd":
        assert repo.show(branch, f"out/{task}.txt") == task


@pytest.mark.parametrize(("kind", "nth"), [
    ("attempt-started", 1),     # a worktree is being made
    ("agent-started", 2),       # agents are running
    ("gate-started", 1),        # a check is running
    ("merged", 1),              # just after a merge
    ("merged", 3),              # late in the run
])
def test_sigkill_anywhere_then_resume_gives_the_same_tree(repo: Repo, agent_script: object, tmp_path: Path,
                                                          kind: str, nth: int) -> None:
    env, pids = prepare(repo, tmp_path)
    agent = agent_script(AGENT)  # type: ignore[operator]
    proc = subprocess.Popen([*WSWARM, "start", "--plan", "plan.json", "--agent-cmd", agent], cwd=repo.path,
                            env=dict(os.environ, **env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while sum(e["kind"] == kind for e in events(repo, after_kill=True)) < nth:
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.monotonic() < deadline, f"never reached {kind} #{nth}"
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert wswarm(repo.path, "status", "--json").json()["state"] == "interrupted"

    res = wswarm(repo.path, "resume", env=env)
    assert res.returncode == 0, res.stderr
    branch = integration(repo)
    assert_final_tree(repo, branch)
    assert merges_per_task(repo, branch) == {"a": 1, "b": 1, "c": 1, "d": 1}
    # Every agent the killed orchestrator had started is gone: resume stopped the orphans.
    for pidfile in pids.iterdir():
        assert not alive(int(pidfile.read_text())), pidfile.name
    # Slots the killed run held were reset by the resumed run's pool: idle, clean, on no branch.
    assert_cleans_up(repo)
    leftovers = list((repo.state_dir / "worktrees").glob("*")) if (repo.state_dir / "worktrees").exists() else []
    assert leftovers == []


def test_resume_stops_an_orphaned_agent(repo: Repo, agent_script: object, tmp_path: Path) -> None:
    env, pids = prepare(repo, tmp_path)
    proc = subprocess.Popen([*WSWARM, "start", "--plan", "plan.json", "--agent-cmd", agent_script(AGENT)],  # type: ignore[operator]
                            cwd=repo.path, env=dict(os.environ, **env, AGENT_SLEEP="60"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # a and c run side by side (each wrote its pid), and the orchestrator has recorded both (as resume reads them).
    wait_for(lambda: all((pids / f"{t}-1").exists() and (pids / f"{t}-1").read_text() != ""
                         and agent_pid_recorded(repo, t) for t in "ac"), what="agents a and c running")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    orphans = [int((pids / name).read_text()) for name in ("a-1", "c-1")]
    assert all(alive(pid) for pid in orphans)   # a SIGKILLed orchestrator cannot stop its agents itself
    res = wswarm(repo.path, "resume", env=env)
    assert res.returncode == 0, res.stderr
    assert not any(alive(pid) for pid in orphans)
    resumed = next(e for e in events(repo, after_kill=True) if e["kind"] == "run-resumed")
    assert resumed["orphans_killed"] == 2
    assert "stopped 2 orphaned agent or check process group(s)" in res.stderr


def test_a_gated_branch_is_merged_on_resume_without_running_its_agent(repo: Repo, agent_script: object,
                                                                      tmp_path: Path) -> None:
    """The orchestrator died after the gate passed and before the merge."""
    env, pids = prepare(repo, tmp_path)
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent_script(AGENT), env=env)  # type: ignore[operator]
    assert res.returncode == 0, res.stderr
    branch = integration(repo)
    done_tree = repo.git("rev-parse", f"{branch}^{{tree}}")
    # Undo the last merge ("d") as if it never happened, and put the state where the crash left it.
    before = repo.git("rev-parse", f"{branch}^1")
    repo.git("update-ref", f"refs/heads/{branch}", before, repo.git("rev-parse", branch))
    run_dir = next((repo.state_dir / "runs").iterdir())
    db = sqlite3.connect(run_dir / "state.db")
    with db:
        db.execute("UPDATE run SET state = 'running', merge_gate = NULL, integration_head = ?", (before,))
        db.execute("UPDATE tasks SET status = 'merging', merge_commit = NULL WHERE id = 'd'")
        db.execute("UPDATE attempts SET outcome = 'gated' WHERE task_id = 'd'")
    db.close()
    res = wswarm(repo.path, "resume", env=env)
    assert res.returncode == 0, res.stderr
    assert repo.git("rev-parse", f"{branch}^{{tree}}") == done_tree
    assert_final_tree(repo, branch)
    assert not (pids / "d-2").exists()   # the agent did not run again
    assert merges_per_task(repo, branch) == {"a": 1, "b": 1, "c": 1, "d": 1}
    assert [e["task"] for e in events(repo, after_kill=True) if e["kind"] == "merge-recovered"] == ["d"]
    d = next(t for t in wswarm(repo.path, "status", "--json").json()["tasks"] if t["id"] == "d")
    assert (d["status"], d["attempts"]) == ("merged", 1)
    pr = (run_dir / "pr.md").read_text()
    assert "### `d` — d\n\n```\nwrote out/d.txt\n```" in pr


def test_new_commits_on_the_users_branch_mid_run_do_not_disturb_it(repo: Repo, agent_script: object,
                                                                   tmp_path: Path) -> None:
    env, pids = prepare(repo, tmp_path)
    proc = subprocess.Popen([*WSWARM, "start", "--plan", "plan.json", "--agent-cmd", agent_script(AGENT)],  # type: ignore[operator]
                            cwd=repo.path, env=dict(os.environ, **env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (pids / "a-1").exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    repo.write("USER.md", "my own work\n")
    mine = repo.commit_all("the user keeps working")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    branch = integration(repo)
    assert_final_tree(repo, branch)
    assert repo.git("rev-parse", "HEAD") == mine
    assert subprocess.run(["git", "merge-base", "--is-ancestor", mine, branch], cwd=repo.path).returncode == 1
    assert repo.git("status", "--porcelain") == ""


def _file_size_limit(limit: int) -> None:
    """In the child: writes past LIMIT bytes fail with EFBIG, as on a full disk (SIGXFSZ, which
    would kill the process instead, is ignored, as a shell does for `ulimit -f`)."""
    import resource
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_full_disk_while_writing_state_stops_the_run_resumably(repo: Repo, agent_script: object,
                                                                  tmp_path: Path) -> None:
    env, _ = prepare(repo, tmp_path)
    agent = agent_script(AGENT)  # type: ignore[operator]
    res = subprocess.run([*WSWARM, "start", "--plan", "plan.json", "--agent-cmd", agent], cwd=repo.path,
                         env=dict(os.environ, **env, AGENT_SLEEP="0"), capture_output=True, text=True,
                         preexec_fn=lambda: _file_size_limit(120_000), timeout=120)
    # One clear line and the way on; no traceback, no "internal error".
    assert res.returncode == 130, res.stderr
    # The run was created and got going before the disk filled up (its limit leaves room for that).
    assert "stopped: no space left to write" in res.stderr and "wswarm resume" in res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    assert wswarm(repo.path, "status", "--json").json()["state"] == "interrupted"
    # No task was charged for the machine's problem, and what was merged stays merged.
    merged_before = merges_per_task(repo, integration(repo))
    assert all(count == 1 for count in merged_before.values())

    res = wswarm(repo.path, "resume", env=dict(env, AGENT_SLEEP="0"))
    assert res.returncode == 0, res.stderr
    branch = integration(repo)
    assert_final_tree(repo, branch)
    assert merges_per_task(repo, branch) == {"a": 1, "b": 1, "c": 1, "d": 1}
    tasks = wswarm(repo.path, "status", "--json").json()["tasks"]
    assert all(t["status"] == "merged" for t in tasks)
