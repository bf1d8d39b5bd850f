"""Agents that reach into git state shared with the user: the checkout, branches, the stash.

The agents here are real processes running real git against the user's repository, as a careless
or hostile command agent would.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Repo, wswarm, write_plan
from worktree_swarm import guard
from worktree_swarm.git.repo import Repo as GitRepo

# Attempt 1 misbehaves as told by MISCHIEF; attempt 2 (with the feedback) does its work properly.
AGENT = """
import subprocess
user = os.environ["USER_ROOT"]
if os.environ["WSWARM_ATTEMPT"] == "1":
    kind = os.environ["MISCHIEF"]
    if kind == "switch":
        subprocess.run(["git", "-C", user, "checkout", "-q", "-b", "hijacked"], check=True)
    elif kind == "stash-pop":
        subprocess.run(["git", "stash", "pop", "-q"], check=True)   # in its own worktree
    elif kind == "write":
        Path(user, "leak.txt").write_text("written from an agent\\n")
Path(os.environ["WSWARM_TASK_ID"] + ".txt").write_text("done\\n")
"""


def events(repo: Repo) -> list[dict[str, object]]:
    run_dir = next((repo.state_dir / "runs").iterdir())
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def run(repo: Repo, agent_script: object, mischief: str) -> dict[str, object]:
    write_plan(repo.path / "plan.json", [{"id": "t", "description": "write t.txt"}])
    repo.git("add", "plan.json")
    repo.git("commit", "-q", "-m", "plan")
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent_script(AGENT),  # type: ignore[operator]
                 env={"USER_ROOT": str(repo.path), "MISCHIEF": mischief})
    assert res.returncode == 0, res.stderr
    [task] = wswarm(repo.path, "status", "--json").json()["tasks"]
    return task  # type: ignore[no-any-return]


def test_an_agent_switching_the_users_checkout_fails_its_attempt(repo: Repo, agent_script: object) -> None:
    task = run(repo, agent_script, "switch")
    assert (task["status"], task["attempts"]) == ("merged", 2)
    [changed] = [e for e in events(repo) if e["kind"] == "shared-state-changed"]
    assert changed["blamed"] is True and changed["agents_running"] == ["t#1"]
    assert "the checkout's HEAD moved from main to hijacked" in str(changed["detail"])
    failed = [e for e in events(repo) if e["kind"] == "agent-failed"]
    assert "git state shared with the user changed while this agent ran" in str(failed[0]["reason"])
    # wswarm does not switch the user's checkout back behind their back: it says what happened.
    assert repo.git("symbolic-ref", "--short", "HEAD") == "hijacked"


def test_a_popped_user_stash_is_restored_and_never_merged(repo: Repo, agent_script: object) -> None:
    repo.write("wip.txt", "the user's work in progress\n")
    repo.git("stash", "push", "-q", "-u", "-m", "my wip")
    before = repo.git("stash", "list", "--format=%H %gs")
    task = run(repo, agent_script, "stash-pop")
    assert (task["status"], task["attempts"]) == ("merged", 2)
    assert repo.git("stash", "list", "--format=%H %gs") == before
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    assert "wip.txt" not in repo.git("ls-tree", "-r", "--name-only", branch).splitlines()
    [changed] = [e for e in events(repo) if e["kind"] == "shared-state-changed"]
    assert "'On main: my wip' was popped or dropped" in str(changed["detail"])
    assert changed["restored"] == [before.split()[0]]


def test_a_write_into_the_users_checkout_is_reported_with_who_ran(repo: Repo, agent_script: object) -> None:
    task = run(repo, agent_script, "write")
    # Files in a checkout also change by the user's own hand: reported, not blamed.
    assert (task["status"], task["attempts"]) == ("merged", 1)
    [changed] = [e for e in events(repo) if e["kind"] == "shared-state-changed"]
    assert "files in the checkout changed: leak.txt" in str(changed["detail"])
    assert changed["agents_running"] == ["t#1"] and changed["blamed"] is False
    assert "- while `t#1` ran: files in the checkout changed: leak.txt" in wswarm(repo.path, "pr").stdout
    assert (repo.path / "leak.txt").read_text() == "written from an agent\n"


def test_well_behaved_agents_raise_nothing(repo: Repo, agent_script: object) -> None:
    repo.write("dirty.txt", "the user's uncommitted file\n")
    task = run(repo, agent_script, "none")
    assert (task["status"], task["attempts"]) == ("merged", 1)
    assert not [e for e in events(repo) if e["kind"] == "shared-state-changed"]


def test_compare_names_each_kind_of_change(repo: Repo) -> None:
    git_repo = GitRepo.discover(repo.path)
    repo.write("a.txt", "a\n")
    before = guard.snapshot(git_repo)
    repo.git("branch", "feature")
    repo.git("branch", "wswarm/run/tasks/x/1")          # wswarm's own branches are not the user's
    repo.write("a.txt", "changed\n")
    after = guard.snapshot(git_repo)
    assert [(c.kind, c.detail) for c in guard.compare(before, after)] == [
        ("branch", "branch feature was created"), ("checkout", "files in the checkout changed: a.txt")]
    assert guard.compare(after, after) == []


def test_restore_puts_back_lost_entries_without_duplicating(repo: Repo) -> None:
    git_repo = GitRepo.discover(repo.path)
    for name in ("first", "second"):
        repo.write(f"{name}.txt", name)
        repo.git("stash", "push", "-q", "-u", "-m", name)
    before = guard.snapshot(git_repo)
    repo.git("stash", "drop", "-q", "stash@{1}")
    after = guard.snapshot(git_repo)
    assert guard.restore_stash(git_repo, before, after) == [before.stash[1][0]]
    assert sorted(guard.snapshot(git_repo).stash) == sorted(before.stash)
    assert guard.restore_stash(git_repo, before, guard.snapshot(git_repo)) == []
    assert Path(repo.path, "first.txt").exists() is False   # restoring never applies anything
