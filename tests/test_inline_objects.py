"""A start commit's objects sent inline with a request: exactly what a clone holding an earlier start
lacks, written there in an order that never leaves a commit without its closure."""

from __future__ import annotations

import base64
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Repo, git

from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.remote import gitwire
from worktree_swarm.util.types import BranchName, Sha


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


def repack(payload: str, keep: Callable[[int, str], bool]) -> str:
    """PAYLOAD with only the records KEEP(kind, oid) says yes to."""
    raw = zlib.decompress(base64.b64decode(payload))
    out, at = b"", 0
    while at < len(raw):
        end = raw.index(b"\n", at)
        kind, size, oid = raw[at:end].decode().split(" ")
        record = raw[at:end + 1 + int(size)]
        if keep(int(kind), oid):
            out += record
        at = end + 1 + int(size)
    return base64.b64encode(zlib.compress(out)).decode()


def integrator_with_base(repo: Repo, tmp_path: Path, base: str) -> Path:
    """A repository holding BASE's closure alone, as an integrator holds the starts it made."""
    there = tmp_path / "integrator"
    git(tmp_path, "init", "-q", "--bare", str(there))
    git(repo.path, "push", "-q", str(there), f"{base}:refs/heads/main")
    return there


@pytest.mark.parametrize("broken", [None, "tree", "blob", "commit", "garbage"])
def test_a_branch_written_from_an_outcomes_objects_is_whole_or_refused(repo: Repo, tmp_path: Path,
                                                                       broken: str | None) -> None:
    base, sha = history(repo)
    _, payload = gitwire.objects_since(wire(repo.path), sha, [base]) or ("", "")
    dropped = {"tree": 2, "blob": 3, "commit": 1}.get(broken or "")
    victim = next((oid for kind, oid in records(payload) if kind == dropped), None)
    if broken == "garbage":
        payload = "not base64 at all!"
    elif victim is not None:
        payload = repack(payload, lambda kind, oid: oid != victim)
    there = integrator_with_base(repo, tmp_path, base)
    other = history_elsewhere(repo, tmp_path)

    errors = gitwire.write_branches(wire(there), [(BranchName("wswarm/r/t/1"), Sha(sha), Sha(base), payload),
                                                  other])

    assert errors[1] is None and git(there, "rev-parse", f"refs/heads/{other[0]}") == other[1]
    if broken is None:
        assert errors[0] is None and git(there, "rev-parse", "refs/heads/wswarm/r/t/1") == sha
        git(there, "fsck", "--connectivity-only", "--no-dangling")
    else:
        # a branch whose history or tree is not all here is never set: the merge would read a hole
        assert errors[0] is not None
        assert git(there, "for-each-ref", "--format=%(refname)", "refs/heads/wswarm/r/t") == ""


def history_elsewhere(repo: Repo, tmp_path: Path) -> tuple[BranchName, Sha, Sha, str]:
    """A second outcome of the same batch, on a branch of the base's: it is written whatever the first is."""
    base = repo.git("rev-list", "--max-parents=0", "HEAD")
    repo.git("switch", "-q", "-c", "other", base)
    repo.write("other.txt", "other\n")
    head = repo.commit_all("other")
    repo.git("switch", "-q", "main")
    _, payload = gitwire.objects_since(wire(repo.path), head, [base]) or ("", "")
    return BranchName("wswarm/r/other/1"), Sha(head), Sha(base), payload
