"""A start commit's objects sent inline with a request: exactly what a clone holding an earlier start
lacks, written there in an order that never leaves a commit without its closure."""

from __future__ import annotations

import base64
import os
import zlib
from pathlib import Path

from conftest import Repo, git

from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.remote import gitwire


def wire(path: Path) -> GitRepo:
    return GitRepo(root=path, common_dir=path / ".git" if (path / ".git").exists() else path)


def records(payload: str) -> list[tuple[int, str]]:
    raw = zlib.decompress(base64.b64decode(payload))
    out, at = [], 0
    while at < len(raw):
        end = raw.index(b"\n", at)
        kind, size, oid = raw[at:end].decode().split(" ")
        out.append((int(kind), oid))
        at = end + 1 + int(size)
    return out


def closure(path: Path, commit: str) -> set[str]:
    return set(git(path, "rev-list", "--objects", "--no-object-names", commit).split())


def history(repo: Repo) -> tuple[str, str]:
    """A base, then a task branch (a nested file changed, a folder added, a file kept as it was) merged
    back with a merge commit: the base and the merge."""
    for i in range(30):
        repo.write(f"src/d{i % 3}/f{i}.py", f"x = {i}\n")
    base = repo.commit_all("base")
    repo.git("switch", "-q", "-c", "task")
    repo.write("src/d1/f1.py", "x = 'changed'\n")
    repo.write("docs/new/page.md", "# new\n")
    repo.write("src/d2/copy.py", "x = 2\n")          # the same blob as src/d2/f2.py: the base has it
    repo.commit_all("task")
    repo.git("switch", "-q", "main")
    repo.write("README.md", "# merged\n")
    repo.commit_all("main moves")
    repo.git("merge", "-q", "--no-ff", "-m", "merge task", "task")
    return base, repo.git("rev-parse", "HEAD")


def test_the_objects_since_a_base_are_exactly_what_it_lacks_and_complete_the_commit_there(repo: Repo,
                                                                                           tmp_path: Path) -> None:
    base, sha = history(repo)
    got = gitwire.objects_since(wire(repo.path), sha, [base])
    assert got is not None and got[0] == base
    sent = records(got[1])
    assert {oid for _, oid in sent} == closure(repo.path, sha) - closure(repo.path, base)
    # every tree and blob before any commit; the commits oldest first, the start itself last
    kinds = [kind for kind, _ in sent]
    assert kinds == sorted(kinds, key=lambda k: k == 1) and sent[-1] == (1, sha)
    commits = [oid for kind, oid in sent if kind == 1]
    assert commits == git(repo.path, "rev-list", "--topo-order", "--reverse", sha, f"^{base}").split()
    # a clone that has the base alone gets the start commit whole from the payload
    worker = tmp_path / "worker"
    git(tmp_path, "init", "-q", "--bare", str(worker))
    git(repo.path, "push", "-q", str(worker), f"{base}:refs/heads/base")
    assert not gitwire.has_commit(wire(worker), sha)
    assert gitwire.apply_objects(wire(worker), sha, got[1])
    assert closure(worker, sha) == closure(repo.path, sha)
    git(worker, "fsck", "--connectivity-only", "--no-dangling")


def test_the_oldest_base_that_fits_is_chosen_and_too_much_is_not_sent_inline(repo: Repo) -> None:
    base, sha = history(repo)
    middle = repo.git("rev-parse", "HEAD^1")
    got = gitwire.objects_since(wire(repo.path), sha, [base, middle])
    assert got is not None and got[0] == base
    repo.write("big.bin", os.urandom(2 * gitwire.INLINE_BYTES).hex())
    big = repo.commit_all("too big to travel inline")
    assert gitwire.objects_since(wire(repo.path), big, [base, sha]) is None
    # a base this clone does not have is passed over, not an error
    assert gitwire.objects_since(wire(repo.path), sha, ["0" * 40]) is None
