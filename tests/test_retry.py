"""`wswarm retry`: new attempts for a finished run's failed tasks and what they blocked."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from worktree_swarm.ui.describe import describe

from conftest import Repo, Result, assert_cleans_up, wswarm, write_plan

# A task named "flaky-…" fails until the MARKER file exists; every attempt records the feedback it
# was given; a task's file says whether the work of the task "base" was in its worktree.
AGENT = """
tid, n = os.environ["WSWARM_TASK_ID"], os.environ["WSWARM_ATTEMPT"]
seen = Path(os.environ["SEEN"])
seen.mkdir(exist_ok=True)
feedback = os.environ.get("WSWARM_FEEDBACK")
(seen / f"{tid}-{n}").write_text(Path(feedback).read_text() if feedback else "")
if tid.startswith("flaky") and not Path(os.environ["MARKER"]).exists():
    print(f"{tid}: the marker file is missing", flush=True)
    sys.exit(1)
Path("out").mkdir(exist_ok=True)
Path("out", tid + ".txt").write_text(tid + (" saw base" if Path("out/base.txt").exists() else "") + "\\n")
"""

PLAN: list[dict[str, Any]] = [
    {"id": "base", "description": "always works"},
    {"id": "flaky", "description": "works once the marker exists"},
    {"id": "after", "description": "needs flaky", "dependencies": ["flaky"]},
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"SEEN": str(tmp_path / "seen"), "MARKER": str(tmp_path / "marker")}


def run(repo: Repo, env: dict[str, str], *args: str) -> Result:
    return wswarm(repo.path, *args, env=env)


def start(repo: Repo, env: dict[str, str], agent: str, plan: list[dict[str, Any]] = PLAN,
          max_attempts: int = 3) -> Result:
    write_plan(repo.path / "plan.json", plan)
    return run(repo, env, "start", "--plan", "plan.json", "--agent-cmd", agent, "--agents", "2",
               "--max-attempts", str(max_attempts))


def tasks(repo: Repo) -> dict[str, dict[str, Any]]:
    res = wswarm(repo.path, "status", "--json")
    assert res.returncode == 0, res.stderr
    return {t["id"]: t for t in res.json()["tasks"]}


def run_dir(repo: Repo) -> Path:
    return sorted((repo.state_dir / "runs").iterdir())[-1]


def events(repo: Repo) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir(repo) / "events.jsonl").read_text().splitlines()]


def fingerprint(repo: Repo) -> str:
    """The run's rows, its event log and the repository's refs: what a refusal must leave as it is."""
    db = sqlite3.connect(run_dir(repo) / "state.db")
    try:
        rows = [db.execute(f"SELECT * FROM {t}").fetchall() for t in ("run", "tasks", "attempts")]
    finally:
        db.close()
    text = repr(rows) + (run_dir(repo) / "events.jsonl").read_text() + repo.git("for-each-ref")
    return hashlib.sha256(text.encode()).hexdigest()


def test_retry_merges_the_failed_task_and_what_it_blocked(repo: Repo, agent_script: Any, env: dict[str, str]) -> None:
    agent = agent_script(AGENT)
    res = start(repo, env, agent)
    assert res.returncode == 1, res.stderr
    before = tasks(repo)
    assert {t: before[t]["status"] for t in before} == {"base": "merged", "flaky": "failed", "after": "blocked"}
    assert before["flaky"]["attempts"] == 3
    kept = before["flaky"]["worktree"]
    assert kept and Path(kept).is_dir()
    Path(env["MARKER"]).touch()

    res = run(repo, env, "retry")
    assert res.returncode == 0, res.stderr
    assert "retrying run" in res.stderr and "flaky, after" in res.stderr
    after = tasks(repo)
    assert {t: after[t]["status"] for t in after} == {"base": "merged", "flaky": "merged", "after": "merged"}
    assert after["flaky"]["attempts"] == 4 and after["after"]["attempts"] == 1
    assert after["base"]["attempts"] == 1          # merged work is kept, not redone
    branch = res.stderr.split("integration branch: ")[1].split()[0]
    # The new attempt started from the integration head, which holds base's merged work.
    assert repo.show(branch, "out/flaky.txt") == "flaky saw base"
    assert repo.show(branch, "out/base.txt") == "base"
    # The failed attempt's output reached the next one as feedback.
    feedback = (Path(env["SEEN"]) / "flaky-4").read_text()
    assert "attempt 3" in feedback and "the marker file is missing" in feedback
    kinds = [e["kind"] for e in events(repo)]
    assert kinds.count("run-finished") == 2
    retried = next(e for e in events(repo) if e["kind"] == "run-retried")
    assert retried["tasks"] == ["flaky", "after"] and retried["overrides"] is None
    pr = Path(res.stdout.strip()).read_text()
    assert "3 of 3 tasks merged" in pr
    # The failed attempt's kept worktree did not stand in the way; clean removes it with the rest.
    assert after["flaky"]["worktree"] != kept
    assert_cleans_up(repo)


def test_the_budget_is_fresh_and_max_attempts_overrides_it(repo: Repo, agent_script: Any,
                                                           env: dict[str, str]) -> None:
    agent = agent_script(AGENT)
    assert start(repo, env, agent, max_attempts=2).returncode == 1
    assert tasks(repo)["flaky"]["attempts"] == 2

    res = run(repo, env, "retry", "--max-attempts", "1")
    assert res.returncode == 1, res.stderr
    now = tasks(repo)
    assert now["flaky"]["status"] == "failed" and now["flaky"]["attempts"] == 3    # one new attempt
    assert now["after"]["status"] == "blocked" and now["after"]["attempts"] == 0
    assert "after 3 attempts" in now["flaky"]["reason"]
    retried = next(e for e in events(repo) if e["kind"] == "run-retried")
    assert retried["overrides"] == {"max_attempts": 1}
    assert describe(retried) == "run retried: flaky,after (--max-attempts 1)"   # the live view's line

    # Without an override, a second retry gets the run's budget (now 1) afresh, and starts on its own.
    Path(env["MARKER"]).touch()
    res = run(repo, env, "retry", "flaky")
    assert res.returncode == 0, res.stderr
    assert tasks(repo)["flaky"]["attempts"] == 4 and tasks(repo)["after"]["status"] == "merged"


def test_naming_a_task_retries_it_and_its_dependents_only(repo: Repo, agent_script: Any,
                                                          env: dict[str, str]) -> None:
    plan: list[dict[str, Any]] = [{"id": "flaky-a", "description": "a"}, {"id": "flaky-b", "description": "b"},
            {"id": "needs-a", "description": "after a", "dependencies": ["flaky-a"]}]
    agent = agent_script(AGENT)
    assert start(repo, env, agent, plan=plan, max_attempts=1).returncode == 1
    Path(env["MARKER"]).touch()
    run_id = run_dir(repo).name

    res = run(repo, env, "retry", run_id, "flaky-a", "--agent-cmd", agent)
    assert res.returncode == 1, res.stderr      # flaky-b is still failed
    now = tasks(repo)
    assert {t: now[t]["status"] for t in now} == {"flaky-a": "merged", "flaky-b": "failed", "needs-a": "merged"}
    assert now["flaky-b"]["attempts"] == 1
    assert not (Path(env["SEEN"]) / "flaky-b-2").exists()
    retried = next(e for e in events(repo) if e["kind"] == "run-retried")
    assert retried["tasks"] == ["flaky-a", "needs-a"]


def test_a_task_that_failed_gets_its_gate_report_as_feedback(repo: Repo, agent_script: Any,
                                                             env: dict[str, str]) -> None:
    # The gate fails until the marker exists: the loop gives up without writing feedback, retry does.
    repo.write("wswarm.toml", f'[[gate.checks]]\nname = "marker"\nrun = "test -e {env["MARKER"]} || '
               '! ls gated-* 2>/dev/null || { echo the marker check failed; exit 1; }"\n')
    repo.commit_all("gate")
    agent = agent_script("""
tid, n = os.environ["WSWARM_TASK_ID"], os.environ["WSWARM_ATTEMPT"]
feedback = os.environ.get("WSWARM_FEEDBACK")
Path(os.environ["SEEN"]).mkdir(exist_ok=True)
Path(os.environ["SEEN"], f"{tid}-{n}").write_text(Path(feedback).read_text() if feedback else "")
Path(f"{tid}-{n}.txt").write_text("work\\n")
""")
    res = start(repo, env, agent, plan=[{"id": "gated", "description": "d"}], max_attempts=1)
    assert res.returncode == 1, res.stderr
    Path(env["MARKER"]).touch()
    res = run(repo, env, "retry")
    assert res.returncode == 0, res.stderr
    feedback = (Path(env["SEEN"]) / "gated-2").read_text()
    assert "gate FAILED" in feedback and "the marker check failed" in feedback


@pytest.mark.parametrize("args, says", [
    (["retry", "nosuchrun"], "no run named 'nosuchrun'"),
    (["retry", "RUN", "nope"], "has no task 'nope'"),
    (["retry", "RUN", "base"], "task 'base' of run"),
    (["retry", "RUN", "after"], "depends on 'flaky', which failed and is not retried"),
])
def test_refusals_change_nothing(repo: Repo, agent_script: Any, env: dict[str, str], args: list[str],
                                 says: str) -> None:
    assert start(repo, env, agent_script(AGENT), max_attempts=1).returncode == 1
    before = fingerprint(repo)
    res = run(repo, env, *[run_dir(repo).name if a == "RUN" else a for a in args])
    assert res.returncode == 2, res.stderr
    assert says in res.stderr and "hint:" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 2
    assert fingerprint(repo) == before


def test_refuses_a_run_where_every_task_merged(repo: Repo, agent_script: Any, env: dict[str, str]) -> None:
    Path(env["MARKER"]).touch()
    assert start(repo, env, agent_script(AGENT)).returncode == 0
    before = fingerprint(repo)
    res = run(repo, env, "retry")
    assert res.returncode == 2 and "every task merged" in res.stderr
    assert fingerprint(repo) == before


def test_refuses_a_running_or_interrupted_run(repo: Repo, agent_script: Any, env: dict[str, str]) -> None:
    assert start(repo, env, agent_script(AGENT), max_attempts=1).returncode == 1
    # Another process drives it: it holds the run's lock.
    fd = os.open(run_dir(repo) / "run.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = fingerprint(repo)
        res = run(repo, env, "retry")
        assert res.returncode == 2 and "being driven by another wswarm process" in res.stderr, res.stderr
        assert fingerprint(repo) == before
    finally:
        os.close(fd)
    # An orchestrator killed mid-run leaves the run marked running, with its lock free.
    db = sqlite3.connect(run_dir(repo) / "state.db")
    with db:
        db.execute("UPDATE run SET state = 'running'")
    db.close()
    before = fingerprint(repo)
    res = run(repo, env, "retry")
    assert res.returncode == 2 and "was interrupted" in res.stderr and "wswarm resume" in res.stderr
    assert fingerprint(repo) == before


def test_resume_of_a_finished_run_points_to_retry(repo: Repo, agent_script: Any, env: dict[str, str]) -> None:
    assert start(repo, env, agent_script(AGENT), max_attempts=1).returncode == 1
    res = run(repo, env, "resume")
    assert res.returncode == 2 and "wswarm retry" in res.stderr
