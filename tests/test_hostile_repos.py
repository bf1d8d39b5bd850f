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


def test_a_git_too_old_for_in_memory_merges_is_refused_up_front(repo: Repo, tmp_path: Path) -> None:
    """A real wrapper on PATH plays an old git: it answers --version and passes the rest through."""
    import shutil
    real = shutil.which("git")
    bin_dir = tmp_path / "old-git"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "git version 2.30.9"; exit 0; }}\nexec {real} "$@"\n')
    fake.chmod(0o755)
    plan = write_plan(repo.path.parent / "plan.json", [{"id": "t", "description": "d"}])
    import os
    res = wswarm(repo.path, "start", "--plan", str(plan), "--agent-cmd", WRITE,
                 env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert res.returncode == 2
    assert res.stderr.splitlines()[0] == ("wswarm: wswarm needs git 2.38 or newer for in-memory merges "
                                          "(found git version 2.30.9)")
    assert not (repo.path / ".git" / "wswarm").exists()


def test_git_versions_are_read_with_vendor_suffixes() -> None:
    from worktree_swarm.git.repo import git_version
    assert git_version("git version 2.39.5") == (2, 39, 5)
    assert git_version("git version 2.45.1.windows.1") == (2, 45, 1)
    assert git_version("git version 2.38") == (2, 38)
    assert git_version("nonsense") == ()
