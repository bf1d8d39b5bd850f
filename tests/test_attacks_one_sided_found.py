"""Counterexamples found for the in-process merge (`one_sided`): merges where it answers with a tree that
`git merge-tree --write-tree` does not write (or where git's merge fails).

Found by a red-team review: at the top level `_merge` returned THEIRS' (or OURS') root tree id as it
was whenever the other side's root tree was the base's — without reading it. git always rewrites the root
tree from the entries it parsed (modes made canonical, entries sorted, duplicates dropped, a tree id
that is not a tree read as empty), so a root tree git would not write comes out different. The head
being the task's start (the first task merged since) is the train's everyday case.

Each test asserts the SAFE behaviour: it fails when the attack works. Real git, no mocks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pygit2
import pytest
from conftest import Repo

from worktree_swarm.git.one_sided import one_sided
from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.util.types import Sha


def wire(path: Path) -> GitRepo:
    return GitRepo(root=path, common_dir=path / ".git")


def git_merge(path: Path, ours: str, theirs: str) -> tuple[int, str | None]:
    # as wswarm runs git: replacement objects ignored (as libgit2 ignores them)
    res = subprocess.run(["git", "--no-replace-objects", "merge-tree", "--write-tree", ours, theirs], cwd=path,
                         capture_output=True, text=True)
    words = res.stdout.split()
    return res.returncode, (words[0] if words else None)


def assert_safe(path: Path, ours: str, theirs: str) -> None:
    """one_sided answers None, or exactly the tree of git's clean merge."""
    fast = one_sided(wire(path), Sha(ours), Sha(theirs))
    code, tree = git_merge(path, ours, theirs)
    assert fast is None or (code == 0 and fast == tree), (
        f"one_sided wrote {fast}; git merge-tree exited {code} with {tree}")


def raw_tree(pg: pygit2.Repository, *entries: tuple[bytes, bytes, pygit2.Oid], tail: bytes = b"") -> pygit2.Oid:
    """A tree object holding ENTRIES exactly as given (order, modes, repeats), then TAIL."""
    data = b"".join(mode + b" " + name + b"\0" + oid.raw for mode, name, oid in entries) + tail
    return pg.odb.write(pygit2.GIT_OBJECT_TREE, data)


def raw_commit(pg: pygit2.Repository, tree: pygit2.Oid | str, *parents: str, when: int = 1_700_000_000) -> str:
    """A commit object naming TREE as its tree, whatever TREE is (or whether it exists)."""
    text = f"tree {tree}\n" + "".join(f"parent {p}\n" for p in parents)
    text += f"author Agent <agent@example.invalid> {when} +0000\ncommitter Agent <agent@example.invalid> {when} +0000\n\nc\n"
    return str(pg.odb.write(pygit2.GIT_OBJECT_COMMIT, text.encode()))


def start(repo: Repo) -> tuple[pygit2.Repository, str, pygit2.Oid, pygit2.Oid, pygit2.Oid]:
    """The repository, its HEAD (the task's start and the train's head), the blobs of README.md and
    app/core.py and the tree of app/."""
    pg = pygit2.Repository(str(repo.path))
    head = repo.git("rev-parse", "HEAD")
    root = pg[pygit2.Oid(hex=head)].peel(pygit2.Commit).tree
    return pg, head, root["README.md"].id, root["app"].id, pg.create_blob(b"task\n")


def malformed_roots(pg: pygit2.Repository, readme: pygit2.Oid, app: pygit2.Oid,
                    added: pygit2.Oid) -> dict[str, pygit2.Oid | str]:
    """Root trees (or what a commit names as its tree) git would not write as they are."""
    return {
        "old-git mode 100664": raw_tree(pg, (b"100644", b"README.md", readme), (b"40000", b"app", app),
                                        (b"100664", b"task.txt", added)),
        "entries out of order": raw_tree(pg, (b"100644", b"task.txt", added), (b"100644", b"README.md", readme),
                                         (b"40000", b"app", app)),
        "a name twice": raw_tree(pg, (b"100644", b"README.md", readme), (b"40000", b"app", app),
                                 (b"100644", b"task.txt", added), (b"100644", b"task.txt", readme)),
        "zero-padded folder mode 040000": raw_tree(pg, (b"100644", b"README.md", readme), (b"040000", b"app", app),
                                                   (b"100644", b"task.txt", added)),
        "trailing garbage": raw_tree(pg, (b"100644", b"README.md", readme), (b"40000", b"app", app),
                                     (b"100644", b"task.txt", added), tail=b"garbage"),
        "the tree is a blob": str(added),
        "the tree is missing": "12" * 20,
    }


CASES = ["old-git mode 100664", "entries out of order", "a name twice", "zero-padded folder mode 040000",
         "trailing garbage", "the tree is a blob", "the tree is missing"]


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_root_tree_merged_into_the_head_it_started_from_is_left_to_git(repo: Repo, case: str) -> None:
    """The task starts at the head and nothing merged since (OURS is the merge base): its root tree is
    returned unread. git rewrites it (100644 for 100664, sorted, one entry per name, 40000), fails on
    trailing garbage, and reads a blob or a missing id as an empty tree — never that id."""
    pg, head, readme, app, added = start(repo)
    theirs = raw_commit(pg, malformed_roots(pg, readme, app, added)[case], head)

    assert_safe(repo.path, head, theirs)


@pytest.mark.parametrize("case", CASES)
def test_a_malformed_root_tree_onto_a_head_with_the_base_tree_is_left_to_git(repo: Repo, case: str) -> None:
    """Same, with the head a later commit whose tree is the base's (an empty commit): still unread."""
    pg, head, readme, app, added = start(repo)
    base_tree = pg[pygit2.Oid(hex=head)].peel(pygit2.Commit).tree_id
    ours = raw_commit(pg, base_tree, head, when=1_700_000_100)
    theirs = raw_commit(pg, malformed_roots(pg, readme, app, added)[case], head)

    assert_safe(repo.path, ours, theirs)


def test_a_repository_from_an_old_git_merges_as_git_does(repo: Repo) -> None:
    """No attacker needed: a trusted history from an old git whose root tree holds a 100664 file. A task
    that edits app/core.py only, merged into the head it started from: git's merge writes the root
    with 100644; the process returns the task's root tree with its 100664."""
    pg, head, readme, app, _ = start(repo)
    old = raw_tree(pg, (b"100644", b"README.md", readme), (b"40000", b"app", app),
                   (b"100664", b"legacy.txt", pg.create_blob(b"legacy\n")))
    base = raw_commit(pg, old, head, when=1_700_000_100)
    app_tree = pg[app]
    builder = pg.TreeBuilder(app_tree)
    builder.insert("core.py", pg.create_blob(b"VALUE = 2\n"), pygit2.GIT_FILEMODE_BLOB)
    edited = raw_tree(pg, (b"100644", b"README.md", readme), (b"40000", b"app", builder.write()),
                      (b"100664", b"legacy.txt", pg.create_blob(b"legacy\n")))
    theirs = raw_commit(pg, edited, base, when=1_700_000_200)

    assert_safe(repo.path, base, theirs)


def test_an_empty_task_onto_an_old_git_head_merges_as_git_does(repo: Repo) -> None:
    """The mirror case (`theirs == base: return ours`): the head's root, from an old git, holds a 100664
    file and has moved on; the task changed nothing. git rewrites the head's root (100644), the process
    returns it unread."""
    pg, head, readme, app, _ = start(repo)
    legacy = pg.create_blob(b"legacy\n")
    base = raw_commit(pg, raw_tree(pg, (b"100644", b"README.md", readme), (b"40000", b"app", app),
                                   (b"100664", b"legacy.txt", legacy)), head, when=1_700_000_100)
    ours = raw_commit(pg, raw_tree(pg, (b"100644", b"README.md", pg.create_blob(b"# moved on\n")),
                                   (b"40000", b"app", app), (b"100664", b"legacy.txt", legacy)),
                      base, when=1_700_000_200)
    theirs = raw_commit(pg, pg[pygit2.Oid(hex=base)].peel(pygit2.Commit).tree_id, base, when=1_700_000_300)

    assert_safe(repo.path, ours, theirs)


def test_a_replace_ref_is_ignored_by_git_as_wswarm_runs_it_and_by_the_process(repo: Repo) -> None:
    """An agent working in a worktree of the repository shares its refs and can run `git replace`: a
    plain git would read the replacement tree, but wswarm runs git with replacements off, and libgit2
    never reads them: the process and git's merge agree on the tree."""
    pg, head, readme, app, added = start(repo)
    builder = pg.TreeBuilder(pg[pygit2.Oid(hex=head)].peel(pygit2.Commit).tree)
    builder.insert("task.txt", added, pygit2.GIT_FILEMODE_BLOB)
    honest = builder.write()
    builder.insert("task.txt", pg.create_blob(b"swapped\n"), pygit2.GIT_FILEMODE_BLOB)
    swapped = builder.write()
    theirs = raw_commit(pg, honest, head)
    builder = pg.TreeBuilder(pg[pygit2.Oid(hex=head)].peel(pygit2.Commit).tree)
    builder.insert("head.txt", pg.create_blob(b"head\n"), pygit2.GIT_FILEMODE_BLOB)
    ours = raw_commit(pg, builder.write(), head, when=1_700_000_100)
    repo.git("replace", str(honest), str(swapped))

    assert_safe(repo.path, ours, theirs)
