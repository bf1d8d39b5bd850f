"""A start commit's objects sent inline with a request: what a clone holding an earlier start lacks
(and a copied file's blob it has), written there in an order that never leaves a commit without its closure."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Repo, git

from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.remote import gitwire, inline
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
    payload = inline.objects_since(wire(repo.path), sha, base)
    assert payload is not None
    sent = records(payload)
    # What the base lacks, and of what it has only the file the task copied: the objects are found by
    # comparing each commit's tree with its first parent's (a blob back at another path goes again).
    lacking = closure(repo.path, sha) - closure(repo.path, base)
    assert {oid for _, oid in sent} - lacking == {git(repo.path, "rev-parse", f"{sha}:src/d2/copy.py").strip()}
    assert lacking <= {oid for _, oid in sent}
    # every tree and blob before any commit; the commits oldest first, the start itself last
    kinds = [kind for kind, _ in sent]
    assert kinds == sorted(kinds, key=lambda k: k == 1) and sent[-1] == (1, sha)
    commits = [oid for kind, oid in sent if kind == 1]
    assert commits == git(repo.path, "rev-list", "--topo-order", "--reverse", sha, f"^{base}").split()
    # a clone that has the base alone gets the start commit whole from the payload: written loose, or
    # as one pack that git indexes
    for pack_from, packs in ((len(lacking) + 1, 0), (len(lacking), 1)):
        (tmp_path / str(pack_from)).mkdir()
        worker = worker_with(repo, tmp_path / str(pack_from), base)
        before = set((worker / "objects" / "pack").glob("*.pack"))
        assert not inline.has_commit(wire(worker), sha)
        assert inline.apply_objects(wire(worker), sha, payload, pack_from=pack_from)
        assert closure(worker, sha) == closure(repo.path, sha)
        git(worker, "fsck", "--connectivity-only", "--no-dangling")
        assert len(set((worker / "objects" / "pack").glob("*.pack")) - before) == packs
    # again, every object already there: still whole, nothing written; an object claiming an id its
    # data does not hash to is refused, even an id the clone has
    assert inline.apply_objects(wire(worker), sha, payload, pack_from=1)
    assert len(set((worker / "objects" / "pack").glob("*.pack")) - before) == 1
    blob = next(oid for kind, oid in sent if kind == 3)
    forged = base64.b64encode(zlib.compress(f"3 6 {blob}\nforged".encode())).decode()
    for pack_from in (1, 100):
        assert not inline.apply_objects(wire(worker), sha, forged, pack_from=pack_from)
        assert not inline.apply_objects(wire(worker), sha, payload + "." + forged, pack_from=pack_from)
    # too much is not sent inline; a base this clone does not have is passed over, not an error
    repo.write("big.bin", os.urandom(2 * inline.INLINE_BYTES).hex())
    big = repo.commit_all("too big to travel inline")
    assert inline.objects_since(wire(repo.path), big, sha) is None
    assert inline.objects_since(wire(repo.path), sha, "0" * 40) is None


def test_a_new_start_carries_the_segments_back_to_the_oldest_start_that_fits(repo: Repo, tmp_path: Path) -> None:
    base, merge = history(repo)
    starts = [base, repo.git("rev-parse", "HEAD^1"), merge]
    for i in range(3):
        repo.write(f"later/{i}.txt", f"{i}\n")
        starts.append(repo.commit_all(f"later {i}"))
    chain = inline.StartChain(wire(repo.path), keep=4)
    got = [chain.add(s) for s in starts]
    # the first has nothing before it; then each goes back as far as the chain keeps (4 starts)
    assert got[0] is None
    assert [g[0] for g in got[1:] if g is not None] == [starts[0], starts[0], starts[0], starts[1], starts[2]]
    # the last one's three segments, applied where only its base is, make it whole there
    base_of_last, payload = got[-1] or ("", "")
    assert payload.count(".") == 2
    worker = worker_with(repo, tmp_path, base_of_last)
    assert inline.apply_objects(wire(worker), starts[-1], payload, pack_from=inline.PACK_FROM_WORKER)
    assert closure(worker, starts[-1]) == closure(repo.path, starts[-1])
    git(worker, "fsck", "--connectivity-only", "--no-dangling")
    # a receiver that has the start before the last takes the earlier segments as they are, unread:
    # even made-up ones, which one without that start refuses
    (tmp_path / "later").mkdir()
    later = worker_with(repo, tmp_path / "later", starts[-2])
    made_up = base64.b64encode(zlib.compress(f"3 5 {'0' * 40}\njunk!1 3 {starts[-3]}\nnot".encode())).decode()
    forged = ".".join([made_up] + payload.split(".")[1:])
    assert inline.apply_objects(wire(later), starts[-1], forged, pack_from=inline.PACK_FROM_WORKER)
    assert closure(later, starts[-1]) == closure(repo.path, starts[-1])
    (tmp_path / "early").mkdir()
    early = worker_with(repo, tmp_path / "early", base_of_last)
    assert not inline.apply_objects(wire(early), starts[-1], forged, pack_from=inline.PACK_FROM_WORKER)
    # a start too big for a segment breaks the chain: it goes through the remote, the next counts from it
    repo.write("big.bin", os.urandom(2 * inline.INLINE_BYTES).hex())
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
    payload = inline.objects_since(wire(repo.path), sha, base) or ""
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
    payload = inline.objects_since(wire(repo.path), head, base) or ""
    return BranchName("wswarm/r/other/1"), Sha(head), Sha(base), payload


def test_the_packs_a_worker_receives_are_rolled_up_past_a_few(repo: Repo, tmp_path: Path) -> None:
    base = git(repo.path, "rev-parse", "HEAD")
    worker = worker_with(repo, tmp_path, base)
    packs = worker / "objects" / "pack"
    before, tips = base, []
    for i in range(gitwire.PACKS_MAX + 4):
        repo.write(f"out/{i}.txt", f"{i}\n")
        tips.append(repo.commit_all(f"start {i}"))
        payload = inline.objects_since(wire(repo.path), tips[-1], before)
        assert payload is not None and inline.apply_objects(wire(worker), tips[-1], payload, pack_from=1)
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


def segment(*records: tuple[int, str, bytes]) -> str:
    return base64.b64encode(zlib.compress(b"".join(f"{kind} {len(data)} {oid}\n".encode() + data
                                                   for kind, oid, data in records))).decode()


def test_a_big_folder_or_file_changed_a_little_travels_as_the_change(repo: Repo, tmp_path: Path) -> None:
    for i in range(300):
        repo.write(f"out/t{i:04d}.txt", f"{i}\n")
    repo.write("big.txt", "".join(f"line {i}\n" for i in range(3000)))
    base = repo.commit_all("base")
    repo.write("out/t9999.txt", "new\n")
    repo.write("big.txt", "".join(f"line {i}\n" if i != 1500 else "changed\n" for i in range(3000)))
    sha = repo.commit_all("one more file, one line changed")
    payload = inline.objects_since(wire(repo.path), sha, base)
    assert payload is not None
    kinds = dict((oid, kind) for kind, oid in records(payload))
    folder = git(repo.path, "rev-parse", f"{sha}:out")
    blob = git(repo.path, "rev-parse", f"{sha}:big.txt")
    root = git(repo.path, "rev-parse", f"{sha}^{{tree}}")
    assert (kinds[folder], kinds[blob]) == (12, 13)
    assert kinds[root] == 2        # four entries: as a change it would save less than half
    # the folder is ~12 KB and the file ~30 KB whole; as changes the payload is a few hundred bytes
    assert len(payload) < 1500
    for pack_from in (1, 100):
        (tmp_path / str(pack_from)).mkdir()
        worker = worker_with(repo, tmp_path / str(pack_from), base)
        assert inline.apply_objects(wire(worker), sha, payload, pack_from=pack_from)
        assert closure(worker, sha) == closure(repo.path, sha)
        git(worker, "fsck", "--connectivity-only", "--no-dangling")


def test_a_change_whose_base_is_not_there_or_does_not_fit_it_is_refused(repo: Repo, tmp_path: Path) -> None:
    repo.write("a.txt", "hello world\n")
    base = repo.commit_all("base")
    worker = worker_with(repo, tmp_path, base)
    blob = git(repo.path, "rev-parse", f"{base}:a.txt")
    tree = git(repo.path, "rev-parse", f"{base}^{{tree}}")
    wanted = b"hello there world\n"
    claimed = hashlib.sha1(b"blob %d\0" % len(wanted) + wanted).hexdigest()
    repo.write("a.txt", wanted.decode())
    made = repo.commit_all("there")

    def raw(kind: str, oid: str) -> bytes:
        return subprocess.run(["git", "cat-file", kind, oid], cwd=repo.path, capture_output=True, check=True).stdout

    new_tree = git(repo.path, "rev-parse", f"{made}^{{tree}}")

    def payload(body: bytes, kind: int = 13, oid: str = claimed) -> str:
        return segment((kind, oid, body), (2, new_tree, raw("tree", new_tree)), (1, made, raw("commit", made)))

    for bad in (payload(f"{'d' * 40} 6 6\n".encode() + b"there "),            # a base that is not here
                payload(f"{blob} 6 12\n".encode() + b"there "),               # prefix and suffix past the base
                payload(f"{tree} 6 6\n".encode() + b"there "),                # a base of another kind
                payload(f"{blob} 6 6\n".encode() + b"there ", oid="e" * 40),  # not the object it claims
                payload(f"{blob} -1 6\n".encode() + b"there "),
                payload(f"{blob} 6\n".encode() + b"there "),
                payload(f"{blob} 6 6\n".encode() + b"there ", kind=11)):      # commits never travel as changes
        for pack_from in (1, 100):
            assert not inline.apply_objects(wire(worker), made, bad, pack_from=pack_from)
    assert subprocess.run(["git", "cat-file", "-e", claimed], cwd=worker).returncode != 0
    # the same, well made, is taken
    assert inline.apply_objects(wire(worker), made, payload(f"{blob} 6 6\n".encode() + b"there "), pack_from=100)
    assert git(worker, "cat-file", "-p", claimed) == wanted.decode().strip()
    git(worker, "fsck", "--no-dangling")


def test_changes_of_a_big_object_cannot_make_a_small_payload_unpack_without_bound(repo: Repo, tmp_path: Path) -> None:
    repo.write("big.bin", os.urandom(1 << 20).hex())         # 2 MB
    base = repo.commit_all("base")
    worker = worker_with(repo, tmp_path, base)
    blob = git(repo.path, "rev-parse", f"{base}:big.bin")
    commit = subprocess.run(["git", "cat-file", "commit", base], cwd=repo.path, capture_output=True, check=True).stdout
    empty = hashlib.sha1(b"blob 0\0").hexdigest()

    def payload(n: int) -> str:       # N changes of the 2 MB blob into the empty one, and a commit
        return segment(*[(13, empty, f"{blob} 0 0\n".encode())] * n, (1, base, commit))

    assert inline.apply_objects(wire(worker), base, payload(5), pack_from=100)
    # each change reads the 2 MB base: 40 of them are past what a payload may unpack
    assert len(payload(40)) < 4000
    assert not inline.apply_objects(wire(worker), base, payload(40), pack_from=100)


def test_a_task_line_whose_carried_objects_show_it_whole_needs_no_git_check(repo: Repo, tmp_path: Path) -> None:
    # The integrator's check of an outcome, in process where the objects it carried show the branch whole:
    # a line of commits above its start, every changed entry carried and of its mode's kind.
    for i in range(30):
        repo.write(f"src/d{i % 3}/f{i}.py", f"x = {i}\n")
    base = repo.commit_all("base")
    repo.write("src/d1/f1.py", "x = 'changed'\n")
    repo.write("docs/new/page.md", "# new\n")
    repo.write("src/d2/copy.py", "x = 2\n")          # a blob the start has, at another path
    repo.commit_all("one")
    (repo.path / "src/d0/f3.py").unlink()
    os.symlink("f0.py", repo.path / "src/d0/link")
    head = repo.commit_all("two")
    there = worker_with(repo, tmp_path, base)
    payload = inline.objects_since(wire(repo.path), head, base)
    assert payload is not None
    objects = inline.apply_objects(wire(there), head, payload, pack_from=100)

    assert objects is not None and inline.whole_above(wire(there), objects, head, base)
    assert git(there, "rev-list", "--objects", "--quiet", head, "--not", base) == ""
    # What is here but was not carried vouches for nothing (a refused outcome's leftovers): git decides.
    copied = git(repo.path, "rev-parse", f"{head}:src/d2/copy.py")
    page = git(repo.path, "rev-parse", f"{head}:docs/new")
    for dropped in (copied, page):
        assert not inline.whole_above(wire(there), {k: v for k, v in objects.items() if k != dropped}, head, base)
    # Not a line down to the start the attempt was given
    assert not inline.whole_above(wire(there), objects, head, git(repo.path, "commit-tree", "-p", base, "-m", "x",
                                                                  f"{base}^{{tree}}"))


def test_a_carried_tree_entry_of_another_kind_than_its_mode_is_left_to_git(repo: Repo) -> None:
    repo.write("a.txt", "a\n")
    base = repo.commit_all("base")
    pg = wire(repo.path).pygit
    blob_data = b"not a folder\n"
    blob = pg.odb.write(3, blob_data)
    tree_data = b"100644 a.txt\0" + bytes.fromhex(git(repo.path, "rev-parse", "HEAD:a.txt")) + b"40000 dir\0" + blob.raw
    tree = pg.odb.write(2, tree_data)
    commit_data = (f"tree {tree}\nparent {base}\nauthor A <a@b> 1700000000 +0000\n"
                   f"committer A <a@b> 1700000000 +0000\n\nodd\n").encode()
    commit = pg.odb.write(1, commit_data)
    objects = {str(commit): (1, commit_data), str(tree): (2, tree_data), str(blob): (3, blob_data)}

    assert not inline.whole_above(wire(repo.path), objects, str(commit), base)
    assert subprocess.run(["git", "rev-list", "--objects", "--quiet", str(commit), "--not", base],
                          cwd=repo.path, capture_output=True).returncode != 0
    # nor is a merge, even of carried commits alone
    merge_data = commit_data.replace(b"\nauthor", f"\nparent {base}\nauthor".encode())
    merge = pg.odb.write(1, merge_data)
    assert not inline.whole_above(wire(repo.path), {**objects, str(merge): (1, merge_data)}, str(merge), base)
