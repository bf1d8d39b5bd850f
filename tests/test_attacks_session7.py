"""Session 7 attacks: objects sent as changes of a base, skipped segments and packs written with
index-pack (`inline.apply_objects`); commits, ref moves and deletes made in process (`Repo`).

Each test asserts the SAFE behaviour: it fails when the attack works. Real git, no mocks."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import tracemalloc
import zlib
from pathlib import Path

import pytest
from conftest import Repo, git

from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.remote import gitwire, inline
from worktree_swarm.util.errors import CommandError, RefMovedError
from worktree_swarm.util.types import BranchName, Sha

BRANCH = BranchName("wswarm/r/t/1")


def wire(path: Path) -> GitRepo:
    return GitRepo(root=path, common_dir=path / ".git" if (path / ".git").exists() else path)


def segment(*records: tuple[int, str, bytes]) -> str:
    return base64.b64encode(zlib.compress(b"".join(f"{kind} {len(data)} {oid}\n".encode() + data
                                                   for kind, oid, data in records))).decode()


def oid_of(kind: bytes, data: bytes) -> str:
    return hashlib.sha1(kind + b" %d\0" % len(data) + data).hexdigest()


def raw(path: Path, kind: str, oid: str) -> bytes:
    return subprocess.run(["git", "cat-file", kind, oid], cwd=path, capture_output=True, check=True).stdout


def stash_a_secret(repo: Repo) -> str:
    repo.write("README.md", "# sample\nSECRET_TOKEN=hunter2\n")
    repo.git("stash", "-q")
    return repo.git("rev-parse", "refs/stash")


def a_worker_branch(repo: Repo, tmp_path: Path, name: str = "worker") -> tuple[Sha, Sha, str]:
    """A worker's clone of REPO commits on the start: (start, head, honest payload of the head)."""
    start = repo.git("rev-parse", "HEAD")
    there = tmp_path / name
    git(tmp_path, "clone", "-q", str(repo.path), str(there))
    w = Repo(there)
    w.write("app/core.py", "VALUE = 2\n")
    w.write("app/extra.py", "EXTRA = 1\n")
    head = w.commit_all("worker's change")
    payload = inline.objects_since(wire(there), head, start)
    assert payload is not None
    return Sha(start), Sha(head), payload


# -- 1. a skipped segment's unchecked id reaches the object store's lookup ----------------------------

@pytest.mark.parametrize("claimed", ["zz", "HEAD", "g" * 40, ""])
def test_a_skippable_segment_naming_no_id_at_all_is_refused_not_raised(repo: Repo, tmp_path: Path,
                                                                      claimed: str) -> None:
    """The segment-skip looks up the LAST record's claimed id in the odb before any hash check: pygit2
    raises TypeError for a string that is not hex, which no caller catches. In the integrator's reader
    thread (`_deliver`) that stops the whole run, and again at each resume (the outcome is re-read)."""
    start, head, honest = a_worker_branch(repo, tmp_path)
    payload = segment((1, claimed, b"")) + "." + honest

    try:
        errors = gitwire.write_branches(wire(repo.path), [(BRANCH, head, start, payload)])
    except Exception as exc:     # noqa: BLE001 - the attack: a worker's bytes crash the integrator
        pytest.fail(f"a worker's malformed payload raised {type(exc).__name__} out of write_branches: {exc}")
    assert errors[0] is not None
    assert repo.git("rev-parse", "--verify", "-q", f"refs/heads/{BRANCH}", check=False) == ""


def test_a_skipped_segment_ending_in_the_users_stash_carries_nothing(repo: Repo, tmp_path: Path) -> None:
    """A segment before the last whose last record names a commit the integrator has is skipped
    unread: naming the stash there must not make the stash count as sent."""
    start = repo.git("rev-parse", "HEAD")
    stash = stash_a_secret(repo)
    payload = segment((1, stash, b"junk")) + "." + segment()
    errors = gitwire.write_branches(wire(repo.path), [(BRANCH, Sha(stash), Sha(start), payload)])
    assert errors[0] is not None
    assert repo.git("rev-parse", "--verify", "-q", f"refs/heads/{BRANCH}", check=False) == ""
    # the stash as the LAST segment: read and hashed, and its forged bytes refused
    errors = gitwire.write_branches(wire(repo.path), [(BRANCH, Sha(stash), Sha(start), segment((1, stash, b"junk")))])
    assert errors[0] is not None
    assert repo.git("rev-parse", "--verify", "-q", f"refs/heads/{BRANCH}", check=False) == ""


# -- 2. a change's base is read whole from the integrator's store, whatever its size -------------------

def test_a_change_of_a_huge_object_here_is_not_read_whole(repo: Repo, tmp_path: Path) -> None:
    """A record of kind 13 names any blob of the user's repository as its base: `_undelta` reads it
    whole (and copies it) before comparing its size with the payload's budget. A 100-byte payload
    makes the integrator allocate the largest blob it has (here 96 MB, past the 64 MB a whole payload
    may unpack to; a 4 GB one would take 8 GB)."""
    start, head, honest = a_worker_branch(repo, tmp_path)
    size = 96 * 1024 * 1024
    big = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=repo.path, input=b"\0" * size,
                         capture_output=True, check=True).stdout.decode().strip()
    wanted = b"tiny\n"
    payload = segment((13, oid_of(b"blob", wanted), f"{big} 0 0\n".encode() + wanted))

    tracemalloc.start()
    try:
        errors = gitwire.write_branches(wire(repo.path), [(BRANCH, head, start, payload)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert errors[0] is not None
    assert peak < inline._UNPACKED_MAX, (
        f"a {len(payload)}-byte payload made the integrator allocate {peak >> 20} MB (the base read whole)")


def test_a_change_cannot_turn_the_users_stash_into_an_object_it_does_not_hash_to(repo: Repo, tmp_path: Path) -> None:
    """A change may take a base from the user's store (even an unreachable one, the stash); what it
    makes is still hashed against its claim, so a worker that guesses wrong gets nothing written."""
    start, head, honest = a_worker_branch(repo, tmp_path)
    stash = stash_a_secret(repo)
    secret_blob = repo.git("rev-parse", f"{stash}:README.md")
    claimed = oid_of(b"blob", b"# wrong!\nleak")      # a wrong guess at the stash's first 9 bytes
    payload = segment((13, claimed, f"{secret_blob} 9 0\n".encode() + b"leak"))
    errors = gitwire.write_branches(wire(repo.path), [(BRANCH, head, start, payload + "." + honest)])
    assert errors[0] is not None
    assert subprocess.run(["git", "cat-file", "-e", claimed], cwd=repo.path).returncode != 0
    assert subprocess.run(["git", "cat-file", "-e", oid_of(b"blob", b"# sample\nleak")], cwd=repo.path).returncode != 0


# -- 3. packs written from a worker's objects --------------------------------------------------------

def test_a_forged_object_among_a_packs_worth_writes_no_pack(repo: Repo, tmp_path: Path) -> None:
    start, head, honest = a_worker_branch(repo, tmp_path)
    blobs = [b"blob %d\n" % i for i in range(inline.PACK_FROM_USER + 5)]
    records = [(3, oid_of(b"blob", b), b) for b in blobs]
    records[-1] = (3, records[-1][1], b"not what it claims")
    pack_dir = repo.path / ".git" / "objects" / "pack"
    before = set(pack_dir.glob("*.pack"))
    errors = gitwire.write_branches(wire(repo.path), [(BRANCH, head, start, segment(*records) + "." + honest)])
    assert errors[0] is not None
    assert set(pack_dir.glob("*.pack")) == before
    assert subprocess.run(["git", "cat-file", "-e", records[0][1]], cwd=repo.path).returncode != 0


def test_an_honest_payload_of_many_objects_is_packed_and_whole(repo: Repo, tmp_path: Path) -> None:
    start = repo.git("rev-parse", "HEAD")
    there = tmp_path / "worker"
    git(tmp_path, "clone", "-q", str(repo.path), str(there))
    w = Repo(there)
    for i in range(inline.PACK_FROM_USER + 10):
        w.write(f"gen/{i:03d}.txt", f"{i}\n")
    head = w.commit_all("many")
    payload = inline.objects_since(wire(there), head, start)
    assert payload is not None
    errors = gitwire.write_branches(wire(repo.path), [(BRANCH, Sha(head), Sha(start), payload)])
    assert errors[0] is None and repo.git("rev-parse", f"refs/heads/{BRANCH}") == head
    git(repo.path, "fsck", "--no-dangling")


# -- 4. in-process ref moves and deletes ---------------------------------------------------------------

def test_update_ref_refuses_a_branch_moved_by_git_and_leaves_it(repo: Repo) -> None:
    r = wire(repo.path)
    old = Sha(repo.git("rev-parse", "HEAD"))
    repo.git("branch", "integ", old)
    repo.write("x.txt", "x\n")
    theirs = repo.commit_all("someone else's")
    repo.git("update-ref", "refs/heads/integ", theirs)
    new = r.commit(r.tree_of(old), [old], "wswarm merge\n")
    with pytest.raises(RefMovedError):
        r.update_ref("integ", new, old, reason="wswarm: merge")
    assert repo.git("rev-parse", "refs/heads/integ") == theirs


def test_update_ref_does_not_write_through_a_symbolic_ref(repo: Repo) -> None:
    """The integration branch replaced (by an agent) with a symbolic ref to another branch that sits at
    the recorded head: the move must not land on that other branch (git update-ref would deref)."""
    r = wire(repo.path)
    old = Sha(repo.git("rev-parse", "HEAD"))
    repo.git("branch", "victim", old)
    repo.git("symbolic-ref", "refs/heads/integ", "refs/heads/victim")
    new = r.commit(r.tree_of(old), [old], "wswarm merge\n")
    with pytest.raises((RefMovedError, CommandError)):
        r.update_ref("integ", new, old, reason="wswarm: merge")
    assert repo.git("rev-parse", "refs/heads/victim") == old


def test_update_ref_under_a_held_lock_moves_nothing_and_says_so(repo: Repo) -> None:
    r = wire(repo.path)
    old = Sha(repo.git("rev-parse", "HEAD"))
    repo.git("branch", "integ", old)
    lock = repo.path / ".git" / "refs" / "heads" / "integ.lock"
    lock.write_text("")
    new = r.commit(r.tree_of(old), [old], "wswarm merge\n")
    with pytest.raises(CommandError):
        r.update_ref("integ", new, old, reason="wswarm: merge")
    lock.unlink()
    assert repo.git("rev-parse", "refs/heads/integ") == old


def test_update_ref_creating_refuses_an_existing_branch(repo: Repo) -> None:
    r = wire(repo.path)
    old = Sha(repo.git("rev-parse", "HEAD"))
    repo.write("y.txt", "y\n")
    other = repo.commit_all("other")
    repo.git("branch", "integ", other)
    with pytest.raises(RefMovedError):
        r.update_ref("integ", old, None, reason="wswarm: start")
    assert repo.git("rev-parse", "refs/heads/integ") == other


def test_delete_branch_of_a_symbolic_ref_leaves_its_target(repo: Repo) -> None:
    """`clean` deletes every branch under the run's prefix: one made a symbolic ref to main must go
    alone, never taking main with it (update-ref -d derefs)."""
    r = wire(repo.path)
    main = repo.git("rev-parse", "refs/heads/main")
    repo.git("symbolic-ref", "refs/heads/wswarm/r/t/1", "refs/heads/main")
    r.delete_branch("wswarm/r/t/1")
    assert repo.git("rev-parse", "--verify", "-q", "refs/heads/main") == main
    assert repo.git("for-each-ref", "--format=%(refname)", "refs/heads/wswarm/") == ""


# -- 5. in-process commits are what git commit-tree makes -----------------------------------------------

@pytest.mark.parametrize("message", ["plain\n", "no newline", "a: b\n\nbody\n", "trailing  \n\n\n", "ünïcode\n",
                                     "\nleading blank\n", "crlf\r\nline\r\n"])
def test_an_in_process_commit_is_byte_for_byte_git_commit_tree(repo: Repo, message: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_AUTHOR_DATE", "1700000000 +0130")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "1700000100 -0700")
    head = repo.git("rev-parse", "HEAD")
    tree = repo.git("rev-parse", "HEAD^{tree}")
    ours = wire(repo.path).commit(tree, [head, head], message)
    theirs = subprocess.run(["git", "commit-tree", tree, "-p", head, "-F", "-"], cwd=repo.path, input=message.encode(),
                            capture_output=True, check=True).stdout.decode().strip()
    assert ours == theirs, (raw(repo.path, "commit", ours), raw(repo.path, "commit", theirs))


def test_an_in_process_commit_of_a_missing_tree_fails_as_git_would(repo: Repo) -> None:
    head = repo.git("rev-parse", "HEAD")
    with pytest.raises(CommandError):
        wire(repo.path).commit("1" * 40, [head], "x\n")
    blob = repo.git("rev-parse", "HEAD:README.md")
    with pytest.raises(CommandError):
        wire(repo.path).commit(blob, [head], "x\n")
    with pytest.raises(CommandError):
        wire(repo.path).commit(repo.git("rev-parse", "HEAD^{tree}"), [blob], "x\n")
