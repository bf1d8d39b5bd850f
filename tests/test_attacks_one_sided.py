"""A task branch built to mislead the in-process merge (`one_sided`): it must leave such merges to git,
never raise out of the merge train, never write a tree git would not.

Each test asserts the SAFE behaviour: it fails when the attack works. Real git, no mocks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pygit2
from conftest import Repo

from worktree_swarm.git.merge_tree import merge_tree
from worktree_swarm.git.one_sided import one_sided
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.util.types import Sha

SIG = pygit2.Signature("Agent", "agent@example.invalid", 1_700_000_000, 0)


def wire(path: Path) -> GitRepo:
    return GitRepo(root=path, common_dir=path / ".git")


def git_merge(path: Path, ours: str, theirs: str) -> tuple[int, str]:
    res = subprocess.run(["git", "merge-tree", "--write-tree", ours, theirs], cwd=path, capture_output=True, text=True)
    return res.returncode, res.stdout.split()[0]


def nested(pg: pygit2.Repository, depth: int, leaf: str) -> pygit2.Oid:
    """A chain of DEPTH folders named d, a file LEAF at the bottom."""
    builder = pg.TreeBuilder()
    builder.insert(leaf, pg.create_blob(b"x\n"), pygit2.GIT_FILEMODE_BLOB)
    tree = builder.write()
    for _ in range(depth):
        builder = pg.TreeBuilder()
        builder.insert("d", tree, pygit2.GIT_FILEMODE_TREE)
        tree = builder.write()
    return tree


def commit(pg: pygit2.Repository, tree: pygit2.Oid, *parents: str) -> str:
    return str(pg.create_commit(None, SIG, SIG, "c", tree, [pygit2.Oid(hex=p) for p in parents]))


def test_folders_deeper_than_python_recurses_are_left_to_git(repo: Repo) -> None:
    """Both sides change a file 1,200 folders deep: recursing folder by folder would pass Python's
    recursion limit and raise out of the train (the run would stop at every resume)."""
    pg = pygit2.Repository(str(repo.path))
    base = commit(pg, nested(pg, 1200, "a.txt"), repo.git("rev-parse", "HEAD"))
    ours = commit(pg, nested(pg, 1200, "b.txt"), base)
    theirs = commit(pg, nested(pg, 1200, "c.txt"), base)

    assert one_sided(wire(repo.path), Sha(ours), Sha(theirs)) is None
    code, tree = git_merge(repo.path, ours, theirs)
    merged = merge_tree(wire(repo.path), Sha(ours), Sha(theirs))
    assert (merged.tree is None) == (code == 1) and (merged.tree is None or merged.tree == tree)


def test_a_malformed_tree_on_the_task_branch_is_left_to_git(repo: Repo) -> None:
    """The task's folder holds one name twice (git would never write it; a hostile worker can send it):
    where the head changed that folder too, the process does not merge it by its own reading."""
    pg = pygit2.Repository(str(repo.path))
    head = repo.git("rev-parse", "HEAD")
    root = pg[pygit2.Oid(hex=head)].peel(pygit2.Commit).tree

    def with_folder(entries: bytes) -> pygit2.Oid:
        folder = pg.odb.write(pygit2.GIT_OBJECT_TREE, entries)
        builder = pg.TreeBuilder(root)
        builder.insert("pkg", folder, pygit2.GIT_FILEMODE_TREE)
        return builder.write()

    one, two, three = (pg.create_blob(f"{i}\n".encode()) for i in range(3))
    base = commit(pg, with_folder(b"100644 a.txt\0" + one.raw), head)
    ours = commit(pg, with_folder(b"100644 a.txt\0" + one.raw + b"100644 b.txt\0" + two.raw), base)
    theirs = commit(pg, with_folder(b"100644 a.txt\0" + one.raw + b"100644 c.txt\0" + three.raw
                                    + b"100644 c.txt\0" + one.raw), base)

    assert one_sided(wire(repo.path), Sha(ours), Sha(theirs)) is None


def test_a_task_branch_holding_a_merge_is_left_to_git(repo: Repo) -> None:
    """A merge on the task branch can give the two sides several merge bases (git merges those first):
    the process answers only for a line of single-parent commits above one base."""
    repo.write("x.txt", "x\n")
    base = repo.commit_all("base")
    repo.git("switch", "-q", "-c", "side")
    repo.write("side.txt", "side\n")
    side = repo.commit_all("side")
    repo.git("switch", "-q", "-c", "task", base)
    repo.write("task.txt", "task\n")
    repo.commit_all("task")
    repo.git("merge", "-q", "--no-edit", side)
    theirs = repo.git("rev-parse", "HEAD")
    repo.git("switch", "-q", "-c", "head", base)
    repo.write("head.txt", "head\n")
    ours = repo.commit_all("head")

    assert one_sided(wire(repo.path), Sha(ours), Sha(theirs)) is None
    assert merge_tree(wire(repo.path), Sha(ours), Sha(theirs)).tree == git_merge(repo.path, ours, theirs)[1]


def test_a_huge_folder_is_not_kept_by_the_train_after_its_merge(repo: Repo) -> None:
    """Task branches with huge folders must not pin memory in the long-running train: a folder of 40,000
    files is git's to merge (faster there), and the trees parsed for a merge are kept for the next only
    up to a bound."""
    import gc
    import tracemalloc

    pg = pygit2.Repository(str(repo.path))
    blob = pg.create_blob(b"x\n").raw

    def root(*extra: str) -> pygit2.Oid:
        names = sorted([f"f{i:06d}".encode() for i in range(40_000)] + [e.encode() for e in extra])
        return pg.odb.write(pygit2.GIT_OBJECT_TREE, b"".join(b"100644 " + n + b"\0" + blob for n in names))

    base = commit(pg, root(), repo.git("rev-parse", "HEAD"))
    ours = commit(pg, root("ours"), base)
    theirs = commit(pg, root("theirs"), base)
    tracemalloc.start()
    try:
        merged = merge_tree(wire(repo.path), Sha(ours), Sha(theirs))
        gc.collect()
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert merged.tree == git_merge(repo.path, ours, theirs)[1]
    assert one_sided(wire(repo.path), Sha(ours), Sha(theirs)) is None
    assert kept < 1_000_000, f"{kept} bytes kept after the merge"
