"""Repositories in awkward states: state that cannot be written, submodules."""

from __future__ import annotations

from pathlib import Path

from conftest import Repo, git, wswarm, write_plan

WRITE = 'printf "%s\\n" "$WSWARM_TASK_ID" > "$WSWARM_TASK_ID.txt"'


def test_unwritable_state_folder_is_one_line_and_creates_nothing(repo: Repo) -> None:
    # Root ignores file modes, so the state folder is made unwritable by being a file.
    (repo.path / ".git" / "wswarm").write_text("")
    refs = repo.git("for-each-ref")
    plan = write_plan(repo.path.parent / "plan.json", [{"id": "t", "description": "d"}])
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", WRITE)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        f"wswarm: wswarm cannot write its state under {repo.path / '.git' / 'wswarm'}: Not a directory",
        "hint: it lives under the repository's git common dir; make that writable"]
    assert repo.git("for-each-ref") == refs
    assert len(repo.git("worktree", "list").splitlines()) == 1


def test_a_repository_with_submodules_runs_and_keeps_the_gitlink(repo: Repo, tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    git(sub, "init", "-q", "-b", "main")
    (sub / "s.txt").write_text("s\n")
    git(sub, "add", "-A")
    git(sub, "commit", "-qm", "sub")
    repo.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "lib")
    repo.commit_all("add a submodule")
    gitlink = repo.git("rev-parse", "HEAD:lib")
    write_plan(repo.path / "plan.json", [{"id": "t", "description": "d"}, {"id": "u", "description": "e"}])
    res = wswarm(repo.path, "start", "--plan", "plan.json", "--agent-cmd", WRITE)
    assert res.returncode == 0, res.stderr
    assert "warning: this repository has submodules, and task worktrees do not check them out" in res.stderr
    branch = wswarm(repo.path, "status", "--json").json()["integration_branch"]
    assert repo.git("rev-parse", f"{branch}:lib") == gitlink
    assert repo.git("ls-tree", "--name-only", branch).split() == [".gitmodules", "README.md", "app", "lib",
                                                                    "t.txt", "u.txt"]
