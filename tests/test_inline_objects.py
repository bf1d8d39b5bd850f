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
    out = []
    for segment in payload.split("."):
        raw, at = zlib.decompress(base64.b64decode(segment)), 0
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


def worker_with(repo: Repo, tmp_path: Path, base: str) -> Path:
    """A repository holding BASE's closure alone (a worker's clone, or an integrator's store)."""
    there = tmp_path / "worker"
    git(tmp_path, "init", "-q", "--bare", str(there))
    git(repo.path, "push", "-q", str(there), f"{base}:refs/heads/base")
    return there


def test_the_objects_since_a_base_are_exactly_what_it_lacks_and_complete_the_commit_there(repo: Repo,
                                                                                           tmp_path: Path) -> None:
    base, sha = history(repo)
    payload = gitwire.objects_since(wire(repo.path), sha, base)
    assert payload is not None
    sent = records(payload)
    assert {oid for _, oid in sent} == closure(repo.path, sha) - closure(repo.path, base)
    # every tree and blob before any commit; the commits oldest first, the start itself last
    kinds = [kind for kind, _ in sent]
    assert kinds == sorted(kinds, key=lambda k: k == 1) and sent[-1] == (1, sha)
    commits = [oid for kind, oid in sent if kind == 1]
    assert commits == git(repo.path, "rev-list", "--topo-order", "--reverse", sha, f"^{base}").split()
    # a clone that has the base alone gets the start commit whole from the payload: written loose, or
    # as one pack that git indexes
    for pack_from, packs in ((len(sent) + 1, 0), (len(sent), 1)):
        (tmp_path / str(pack_from)).mkdir()
        worker = worker_with(repo, tmp_path / str(pack_from), base)
        before = set((worker / "objects" / "pack").glob("*.pack"))
        assert not gitwire.has_commit(wire(worker), sha)
        assert gitwire.apply_objects(wire(worker), sha, payload, pack_from=pack_from)
        assert closure(worker, sha) == closure(repo.path, sha)
        git(worker, "fsck", "--connectivity-only", "--no-dangling")
        assert len(set((worker / "objects" / "pack").glob("*.pack")) - before) == packs
    # again, every object already there: still whole, nothing written; an object claiming an id its
    # data does not hash to is refused, even an id the clone has
    assert gitwire.apply_objects(wire(worker), sha, payload, pack_from=1)
    assert len(set((worker / "objects" / "pack").glob("*.pack")) - before) == 1
    blob = next(oid for kind, oid in sent if kind == 3)
    forged = base64.b64encode(zlib.compress(f"3 6 {blob}\nforged".encode())).decode()
    for pack_from in (1, 100):
        assert not gitwire.apply_objects(wire(worker), sha, forged, pack_from=pack_from)
        assert not gitwire.apply_objects(wire(worker), sha, payload + "." + forged, pack_from=pack_from)
    # too much is not sent inline; a base this clone does not have is passed over, not an error
    repo.write("big.bin", os.urandom(2 * gitwire.INLINE_BYTES).hex())
    big = repo.commit_all("too big to travel inline")
    assert gitwire.objects_since(wire(repo.path), big, sha) is None
    assert gitwire.objects_since(wire(repo.path), sha, "0" * 40) is None


def test_a_new_start_carries_the_segments_back_to_the_oldest_start_that_fits(repo: Repo, tmp_path: Path) -> None:
    base, merge = history(repo)
    starts = [base, repo.git("rev-parse", "HEAD^1"), merge]
    for i in range(3):
        repo.write(f"later/{i}.txt", f"{i}\n")
        starts.append(repo.commit_all(f"later {i}"))
    chain = gitwire.StartChain(wire(repo.path), keep=4)
    got = [chain.add(s) for s in starts]
    # the first has nothing before it; then each goes back as far as the chain keeps (4 starts)
    assert got[0] is None
    assert [g[0] for g in got[1:] if g is not None] == [starts[0], starts[0], starts[0], starts[1], starts[2]]
    # the last one's three segments, applied where only its base is, make it whole there
    base_of_last, payload = got[-1] or ("", "")
    assert payload.count(".") == 2
    worker = worker_with(repo, tmp_path, base_of_last)
    assert gitwire.apply_objects(wire(worker), starts[-1], payload, pack_from=gitwire.PACK_FROM_WORKER)
    assert closure(worker, starts[-1]) == closure(repo.path, starts[-1])
    git(worker, "fsck", "--connectivity-only", "--no-dangling")
    # a start too big for a segment breaks the chain: it goes through the remote, the next counts from it
    repo.write("big.bin", os.urandom(2 * gitwire.INLINE_BYTES).hex())
    big = repo.commit_all("big")
    repo.write("after.txt", "after\n")
    after = repo.commit_all("after")
    assert chain.add(big) is None
    got_after = chain.add(after)
    assert got_after is not None and got_after[0] == big


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


@pytest.mark.parametrize("broken", [None, "tree", "blob", "commit", "garbage"])
def test_a_branch_written_from_an_outcomes_objects_is_whole_or_refused(repo: Repo, tmp_path: Path,
                                                                       broken: str | None) -> None:
    base, sha = history(repo)
    payload = gitwire.objects_since(wire(repo.path), sha, base) or ""
    dropped = {"tree": 2, "blob": 3, "commit": 1}.get(broken or "")
    victim = next((oid for kind, oid in records(payload) if kind == dropped), None)
    if broken == "garbage":
        payload = "not base64 at all!"
    elif victim is not None:
        payload = repack(payload, lambda kind, oid: oid != victim)
    there = worker_with(repo, tmp_path, base)  # as an integrator holds the starts it made
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
    payload = gitwire.objects_since(wire(repo.path), head, base) or ""
    return BranchName("wswarm/r/other/1"), Sha(head), Sha(base), payload


def test_the_packs_a_worker_receives_are_rolled_up_past_a_few(repo: Repo, tmp_path: Path) -> None:
    base = git(repo.path, "rev-parse", "HEAD")
    worker = worker_with(repo, tmp_path, base)
    packs = worker / "objects" / "pack"
    before, tips = base, []
    for i in range(gitwire.PACKS_MAX + 4):
        repo.write(f"out/{i}.txt", f"{i}\n")
        tips.append(repo.commit_all(f"start {i}"))
        payload = gitwire.objects_since(wire(repo.path), tips[-1], before)
        assert payload is not None and gitwire.apply_objects(wire(worker), tips[-1], payload, pack_from=1)
        before = tips[-1]
    many = len(list(packs.glob("*.pack")))
    assert many > gitwire.PACKS_MAX
    gitwire.maintain(wire(worker))
    assert len(list(packs.glob("*.pack"))) <= 4 < many
    git(worker, "update-ref", "refs/heads/last", tips[-1])
    git(worker, "fsck", "--no-dangling")
    assert closure(worker, tips[-1]) == closure(repo.path, tips[-1])
    # few packs: nothing to roll up
    gitwire.maintain(wire(worker))
    assert len(list(packs.glob("*.pack"))) <= 4
