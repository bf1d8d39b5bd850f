"""Agents that reach into git state shared with the user: the checkout, branches, the stash.

The agents here are real processes running real git against the user's repository, as a careless
or hostile command agent would.
"""

from __future__ import annotations

import os
from pathlib import Path

import pygit2
import pytest

from conftest import Repo, events, idle_slots, wswarm, write_plan
from worktree_swarm.swarm import guard
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
    elif kind == "repoint":
        Path(".git").write_text(f"gitdir: {user}/.git\\n")
    elif kind == "git-init":
        Path(".git").unlink()
        subprocess.run(["git", "init", "-q"], check=True)
    elif kind == "write":
        Path(user, "leak.txt").write_text("written from an agent\\n")
Path(os.environ["WSWARM_TASK_ID"] + ".txt").write_text("done\\n")
"""


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


def test_a_write_into_the_users_checkout_is_found_while_the_run_goes_on(repo: Repo, agent_script: object) -> None:
    # One after another, each longer than the second between two listings of the checkout's files:
    # the write is found by a listing taken mid-run, not by the last look once every task merged.
    write_plan(repo.path / "plan.json", [{"id": t, "description": t, "dependencies": [d] if d else []}
                                         for t, d in (("a", None), ("b", "a"), ("c", "b"), ("d", "c"), ("e", "d"))])
    repo.git("add", "plan.json")
    repo.git("commit", "-q", "-m", "plan")
    agent = agent_script("""
        if os.environ["WSWARM_TASK_ID"] == "a":
            Path(os.environ["USER_ROOT"], "leak.txt").write_text("written from an agent\\n")
        time.sleep(0.7)
        Path(os.environ["WSWARM_TASK_ID"] + ".txt").write_text("done\\n")
    """)
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", agent, env={"USER_ROOT": str(repo.path)})
    assert res.returncode == 0, res.stderr
    log = events(repo)
    [changed] = [e for e in log if e["kind"] == "shared-state-changed"]
    assert "files in the checkout changed: leak.txt" in str(changed["detail"]) and changed["blamed"] is False
    assert "a#1" in changed["agents_running"]   # type: ignore[operator]
    assert log.index(changed) < next(i for i, e in enumerate(log) if e["kind"] == "merged" and e["task"] == "e")


def test_well_behaved_agents_raise_nothing(repo: Repo, agent_script: object) -> None:
    repo.write("dirty.txt", "the user's uncommitted file\n")
    task = run(repo, agent_script, "none")
    assert (task["status"], task["attempts"]) == ("merged", 1)
    assert not [e for e in events(repo) if e["kind"] == "shared-state-changed"]


def test_compare_names_each_kind_of_change(repo: Repo) -> None:
    git_repo = GitRepo.discover(repo.path)
    repo.write("a.txt", "a\n")
    own = "refs/heads/wswarm/run/"
    before = guard.snapshot(git_repo, own=own)
    repo.git("branch", "feature")
    repo.git("branch", "wswarm/run/tasks/x/1")          # the run's own branches are its own business
    repo.git("branch", "wswarm/other/integration")      # another run's are not
    repo.git("tag", "v9")
    repo.git("config", "core.fsmonitor", "/tmp/evil.sh")
    repo.write("a.txt", "changed\n")
    after = guard.snapshot(git_repo, own=own)
    assert [(c.kind, c.detail) for c in guard.compare(before, after)] == [
        ("branch", "branch feature was created"),
        ("ref", "heads/wswarm/other/integration was created"), ("ref", "tags/v9 was created"),
        ("code", ".git/config was changed (it decides what git runs)"),
        ("checkout", "files in the checkout changed: a.txt")]
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


def test_a_moved_user_branch_is_reported_not_blamed(repo: Repo) -> None:
    git_repo = GitRepo.discover(repo.path)
    repo.git("branch", "feature")
    before = guard.snapshot(git_repo)
    repo.write("b.txt", "b\n")
    repo.commit_all("second")
    repo.git("branch", "-f", "feature", "HEAD")            # as `git push . HEAD:feature` from an agent would
    changes = guard.compare(before, guard.snapshot(git_repo))
    assert [c.detail.split(" moved")[0] for c in changes] == ["branch feature", "branch main"]
    assert not guard.Findings(changes).git_state


def test_watching_never_writes_the_users_index(repo: Repo) -> None:
    git_repo = GitRepo.discover(repo.path)
    index = repo.path / ".git" / "index"
    # Same content, new mtime: a plain `git status` refreshes the index and writes it back, under
    # index.lock, where a `git commit` of the user's would fail.
    os.utime(repo.path / "README.md", ns=(1, 1))
    before = os.stat(index)
    guard.snapshot(git_repo)
    after = os.stat(index)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.parametrize("mischief", ["repoint", "git-init"])
def test_an_agent_that_rewrites_its_git_link_fails_and_nothing_lands_elsewhere(repo: Repo, agent_script: object,
                                                                             mischief: str) -> None:
    task = run(repo, agent_script, mischief)
    assert (task["status"], task["attempts"]) == ("merged", 2)
    failed = [e for e in events(repo) if e["kind"] == "agent-failed"]
    assert failed[0]["reason"] == "the agent rewrote its worktree's .git file"
    # The leftovers were never committed into the user's repository, and its branch did not move.
    assert repo.git("log", "-1", "--format=%s", "main") == "plan"      # run() committed the plan last
    assert repo.git("status", "--porcelain", "--untracked-files=no") == ""
    idle_slots(repo)


def test_a_hooks_folder_swapped_for_a_link_is_put_back_without_touching_its_target(repo: Repo,
                                                                                   tmp_path: Path) -> None:
    git_repo = GitRepo.discover(repo.path)
    hooks = repo.path / ".git" / "hooks"
    (hooks / "pre-merge-commit").write_text("#!/bin/sh\nexit 0\n")
    before = guard.snapshot(git_repo)
    users = tmp_path / "users-folder"
    users.mkdir()
    (users / "notes.txt").write_text("mine\n")
    hooks.rename(tmp_path / "old-hooks")
    hooks.symlink_to(users, target_is_directory=True)
    after = guard.snapshot(git_repo)
    assert any(c.kind == "code" for c in guard.compare(before, after))
    guard.restore_code(git_repo, before, after)
    assert hooks.is_dir() and not hooks.is_symlink()
    assert (hooks / "pre-merge-commit").read_text() == "#!/bin/sh\nexit 0\n"
    assert sorted(p.name for p in users.iterdir()) == ["notes.txt"]


def test_refs_read_from_git_files_are_the_refs_git_lists_but_the_runs_own(repo: Repo) -> None:
    head = repo.git("rev-parse", "HEAD")
    repo.write("x.txt", "x\n")
    second = repo.commit_all("second")
    own = "refs/heads/wswarm/20260101-000000-abcd/"
    for name in ("feature/a", "feature/b/c", "wswarm/older-run/integration", "wswarm/older-run/tasks/t/1",
                 "wswarm/20260101-000000-abcd/tasks/t/1", "wswarm/20260101-000000-abcd/integration"):
        repo.git("branch", name, head)
    repo.git("tag", "v1", head)
    repo.git("tag", "-a", "-m", "annotated", "v2", second)
    repo.git("update-ref", "refs/remotes/origin/main", head)
    repo.git("pack-refs", "--all")
    # loose refs over packed ones: moved, added, one packed and deleted
    repo.git("update-ref", "refs/heads/feature/a", second)
    repo.git("branch", "loose-only", second)
    repo.git("update-ref", "-d", "refs/tags/v1")
    repo.git("symbolic-ref", "refs/heads/alias", "refs/heads/main")
    common = repo.path / ".git"

    got = guard._ref_files(common, own)

    listed = {r.name: r.target for r in pygit2.Repository(str(repo.path)).references.iterator()}
    # the run's own refs and every run's task branches are not read; everything else is, as git lists it
    expected = {name: str(target) if isinstance(target, pygit2.Oid) else f"ref: {target}"
                for name, target in listed.items() if not name.startswith((own, "refs/heads/wswarm/older-run/tasks/"))}
    assert got == expected
    assert "refs/heads/wswarm/older-run/integration" in got and "refs/tags/v1" not in got
    # a task branch packed is left out as well as a loose one
    repo.git("pack-refs", "--all")
    assert guard._ref_files(common, own) == expected
    # a link in a ref's place is read as one, never followed
    (common / "refs" / "heads" / "linked").symlink_to(common / "refs" / "heads" / "main")
    assert guard._ref_files(common, own)["refs/heads/linked"] == "not a regular file"
