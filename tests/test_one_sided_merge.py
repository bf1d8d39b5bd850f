"""Merges computed in process (`one_sided`) are the very trees `git merge-tree --write-tree` writes.

Random histories on real git: each side adds, edits, removes, renames and moves files and folders,
flips modes, swaps a file for a folder, or makes the other side's change too; the side merged in is a
line of commits, the other sometimes a merge. Wherever the in-process merge answers, git's merge must be
clean with the same tree; where a path needs git (a rename meeting an edit, a folder renamed under an
addition...), it must leave the merge to git."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import git

from worktree_swarm.git.merge_tree import merge_tree
from worktree_swarm.git.one_sided import line_down, one_sided
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.util.types import Sha

FILES = [f"d{d}/{s}f{f}.txt" for d in range(3) for s in ("", "s/") for f in range(3)] + ["top.txt"]


def text(rng: random.Random, lines: int = 12) -> str:
    return "".join(f"line {i} {rng.randrange(4)}\n" for i in range(lines))


def files(wt: Path) -> list[str]:
    return sorted(str(p.relative_to(wt)) for p in wt.rglob("*")
                  if ".git" not in p.relative_to(wt).parts and (p.is_file() or p.is_symlink()))


def change(wt: Path, rng: random.Random) -> None:
    """One random change of the worktree WT (none where a folder stands in the way)."""
    try:
        _change(wt, rng)
    except (IsADirectoryError, NotADirectoryError, FileExistsError):
        pass


def _change(wt: Path, rng: random.Random) -> None:
    present = files(wt)
    op = rng.choice(["add", "add", "edit", "edit", "remove", "rename", "move-folder", "mode", "link",
                     "file-to-folder", "add-folder"])
    if op == "add" or not present:
        path = wt / rng.choice(["d0", "d1", "d2/s", "new", "d1/s"]) / f"n{rng.randrange(6)}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text(rng))
    elif op == "edit":
        path = wt / rng.choice(present)
        if not path.is_symlink():
            lines = path.read_text().splitlines(keepends=True) or ["\n"]
            lines[rng.randrange(len(lines))] = f"edited {rng.randrange(100)}\n"
            path.write_text("".join(lines))
    elif op == "remove":
        (wt / rng.choice(present)).unlink()
    elif op == "rename":
        src = wt / rng.choice(present)
        dest = wt / rng.choice(["d0", "d2", "moved", "d1/s"]) / f"r{rng.randrange(4)}.txt"
        if not dest.exists() and not dest.is_symlink():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dest)
    elif op == "move-folder":
        folder = wt / rng.choice(["d0", "d1", "d2/s", "d0/s"])
        dest = wt / rng.choice(["e0", "d1/t", "moved"])
        if folder.is_dir() and not dest.exists() and folder not in dest.parents:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(dest))
    elif op == "mode":
        path = wt / rng.choice(present)
        if not path.is_symlink():
            path.chmod(path.stat().st_mode ^ 0o111)
    elif op == "link":
        path = wt / rng.choice(["d0", "d1", "new"]) / f"l{rng.randrange(3)}"
        if not path.exists() and not path.is_symlink():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.symlink_to(rng.choice(FILES))
    elif op == "file-to-folder":
        path = wt / rng.choice(present)
        path.unlink()
        path.mkdir()
        (path / "inside.txt").write_text(text(rng))
    else:
        path = wt / rng.choice(["d0", "d1", "new"]) / f"g{rng.randrange(2)}" / "x.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text(rng))


def commit(wt: Path, message: str) -> str:
    git(wt, "add", "-A")
    git(wt, "commit", "-q", "--allow-empty", "-m", message)
    return git(wt, "rev-parse", "HEAD")


def case(root: Path, seed: int) -> tuple[str, str, str]:
    """A base, then OURS (a line or a merge of two lines) and THEIRS (a line), from SEED."""
    rng = random.Random(seed)
    wt = root / f"c{seed}"
    git(root, "worktree", "add", "-q", "--detach", str(wt), "base")
    for i in range(rng.randrange(3)):                   # a base of its own, beside the common one
        change(wt, rng)
    base = commit(wt, "case base")
    shared = rng.randrange(1 << 30)

    def side(steps: int, same: bool) -> str:
        git(wt, "checkout", "-q", "--detach", base)
        for i in range(steps):
            if same and i == 0:
                change(wt, random.Random(shared))       # the change both sides make
            else:
                change(wt, rng)
            if rng.random() < 0.5 or i == steps - 1:
                commit(wt, f"step {i}")
        return git(wt, "rev-parse", "HEAD")

    same = rng.random() < 0.15
    theirs = side(rng.randrange(1, 4), same)
    ours = side(rng.randrange(0, 4), same)
    if rng.random() < 0.3:                               # ours: a merge of another line, as the train's head is
        other = side(rng.randrange(1, 3), False)
        git(wt, "checkout", "-q", "--detach", ours)
        if subprocess.run(["git", "merge", "-q", "--no-edit", other], cwd=wt, capture_output=True).returncode == 0:
            ours = git(wt, "rev-parse", "HEAD")
        else:
            git(wt, "merge", "--abort")
    git(root, "worktree", "remove", "--force", str(wt))
    return base, ours, theirs


@pytest.fixture
def history(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    rng = random.Random(0)
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text(rng))
    commit(root, "base")
    git(root, "branch", "base")
    return root


@pytest.mark.parametrize("chunk", range(6))
def test_an_in_process_merge_is_the_tree_git_merges_or_left_to_git(history: Path, chunk: int) -> None:
    repo = GitRepo(root=history, common_dir=history / ".git")
    answered = 0
    for seed in range(chunk * 40, chunk * 40 + 40):
        _, ours, theirs = case(history, seed)
        fast = one_sided(repo, Sha(ours), Sha(theirs))
        res = subprocess.run(["git", "merge-tree", "--write-tree", ours, theirs], cwd=history,
                             capture_output=True, text=True)
        # The base found as the train finds it, from what OURS reaches above the common base commit
        reached = {git(history, "rev-parse", "base"), *git(history, "rev-list", ours, "^base").split()}
        line = line_down(repo, Sha(theirs), reached)
        assert line is not None, f"seed {seed}: THEIRS is a line above the base"
        if line[1]:
            assert one_sided(repo, Sha(ours), Sha(theirs), base=line[0]) == fast, f"seed {seed}: another base"
        else:       # both sides made the same commit: THEIRS is in OURS
            assert fast is None and line[0] == theirs
        if fast is not None:
            answered += 1
            assert res.returncode == 0, f"seed {seed}: git's merge conflicts, the in-process one said {fast}"
            assert fast == res.stdout.split()[0], f"seed {seed}: trees differ"
    git(history, "fsck", "--no-dangling")           # every tree written here is well formed
    # the in-process merge takes most of these (each side changes a few of ~20 paths), not none
    assert answered >= 15, answered


def test_a_merge_that_needs_git_is_left_to_it(history: Path) -> None:
    """A file renamed on one side and edited on the other: git follows the rename (its merge differs from
    taking each side's paths), so the process does not answer, and `merge_tree` returns git's result. A
    folder renamed on one side and added to on the other: git says where the new file may belong."""
    wt = history
    git(wt, "switch", "-q", "-c", "ours", "base")
    os.rename(wt / "d0/f0.txt", wt / "d0/renamed.txt")
    ours = commit(wt, "a rename")
    git(wt, "switch", "-q", "-c", "theirs", "base")
    (wt / "d0/f0.txt").write_text((wt / "d0/f0.txt").read_text() + "an edit\n")
    theirs = commit(wt, "an edit")
    repo = GitRepo(root=wt, common_dir=wt / ".git")

    assert one_sided(repo, Sha(ours), Sha(theirs)) is None
    merged = merge_tree(repo, Sha(ours), Sha(theirs))
    assert merged.tree is not None
    assert git(wt, "show", f"{merged.tree}:d0/renamed.txt").endswith("an edit")

    git(wt, "switch", "-q", "ours")
    shutil.move(str(wt / "d2"), str(wt / "e2"))
    ours = commit(wt, "a folder renamed")
    git(wt, "switch", "-q", "theirs")
    (wt / "d2/added.txt").write_text("into the folder the other side renamed\n")
    theirs = commit(wt, "an addition")

    assert one_sided(repo, Sha(ours), Sha(theirs)) is None
    assert merge_tree(repo, Sha(ours), Sha(theirs)).conflicts == ["e2/added.txt"]


def test_both_sides_moving_a_folder_away_is_left_to_git(history: Path) -> None:
    """Both sides removed d2/s (moved to two different places): the folder d2 is the same on both sides,
    but git finds the files renamed two ways, a conflict."""
    wt = history
    git(wt, "switch", "-q", "-c", "ours", "base")
    shutil.move(str(wt / "d2/s"), str(wt / "moved"))
    ours = commit(wt, "moved")
    git(wt, "switch", "-q", "-c", "theirs", "base")
    shutil.move(str(wt / "d2/s"), str(wt / "elsewhere"))
    theirs = commit(wt, "elsewhere")
    repo = GitRepo(root=wt, common_dir=wt / ".git")

    assert one_sided(repo, Sha(ours), Sha(theirs)) is None
    assert merge_tree(repo, Sha(ours), Sha(theirs)).tree is None
