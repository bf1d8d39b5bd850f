"""A worker's outcome checked whole (`gitwire.write_branches`, git's `rev-list --objects`): objects a
refused outcome left behind never vouch for a later one.

Each test asserts the SAFE behaviour: it fails when the attack works. Real git, no mocks."""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

from conftest import Repo, git

from worktree_swarm.git.repo import Repo as GitRepo
from worktree_swarm.remote import gitwire, inline
from worktree_swarm.util.types import BranchName, Sha

BRANCH = BranchName("wswarm/r/t/1")


def wire(path: Path) -> GitRepo:
    return GitRepo(root=path, common_dir=path / ".git" if (path / ".git").exists() else path)


def records(payload: str) -> list[tuple[bytes, bytes]]:
    """(header line, data) of each object of a one-segment payload."""
    raw, at, out = zlib.decompress(base64.b64decode(payload)), 0, []
    while at < len(raw):
        end = raw.index(b"\n", at)
        size = int(raw[at:end].split(b" ")[1])
        out.append((raw[at:end], raw[end + 1:end + 1 + size]))
        at = end + 1 + size
    return out


def payload_of(parts: list[tuple[bytes, bytes]]) -> str:
    return base64.b64encode(zlib.compress(b"".join(head + b"\n" + data for head, data in parts))).decode()


def an_integrator(repo: Repo, tmp_path: Path) -> tuple[str, Path]:
    """A start commit, and an integrator's store holding it (a bare clone)."""
    repo.write("app/core.py", "VALUE = 10\n")
    start = repo.commit_all("start")
    integrator = tmp_path / "integrator"
    git(tmp_path, "clone", "-q", "--bare", str(repo.path), str(integrator))
    return start, integrator


def test_a_commit_left_by_a_refused_outcome_does_not_vouch_for_the_next(repo: Repo, tmp_path: Path) -> None:
    """Outcome 1 carries a commit and its new tree but not the new file's blob: refused, yet its commit
    and tree are written. Outcome 2 carries only a child of that commit: every object it names is here,
    and only a check that reads the whole history above the start finds the hole left by outcome 1."""
    start, integrator = an_integrator(repo, tmp_path)
    repo.write("app/secret_plan.py", "PLAN = 'a file the integrator never receives'\n")
    first = repo.commit_all("first")
    repo.write("app/core.py", "VALUE = 2\n")
    second = repo.commit_all("second")

    whole = inline.objects_since(wire(repo.path), first, start)
    assert whole is not None
    blob = git(repo.path, "rev-parse", f"{first}:app/secret_plan.py")
    holed = payload_of([r for r in records(whole) if not r[0].endswith(blob.encode())])
    errors = gitwire.write_branches(wire(integrator), [(BRANCH, Sha(first), Sha(start), holed)])
    assert errors[0] is not None
    assert inline.has_commit(wire(integrator), first)      # left behind, dangling and not whole

    later = inline.objects_since(wire(repo.path), second, first)
    assert later is not None
    errors = gitwire.write_branches(wire(integrator), [(BRANCH, Sha(second), Sha(start), later)])

    assert errors[0] is not None and "missing" in errors[0]
    assert git(integrator, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH}") == ""
    assert not gitwire.complete(wire(integrator), [second], [start])


def test_a_whole_outcome_is_complete_above_its_start_whatever_was_refused_before(repo: Repo,
                                                                                 tmp_path: Path) -> None:
    """The honest outcome after a refused one is written and its branch set: the check refuses holes,
    not outcomes."""
    start, integrator = an_integrator(repo, tmp_path)
    repo.write("app/new/deep/file.py", "X = 1\n")
    head = repo.commit_all("head")
    whole = inline.objects_since(wire(repo.path), head, start)
    assert whole is not None
    holed = payload_of(records(whole)[1:])
    assert gitwire.write_branches(wire(integrator), [(BRANCH, Sha(head), Sha(start), holed)])[0] is not None

    assert gitwire.write_branches(wire(integrator), [(BRANCH, Sha(head), Sha(start), whole)]) == [None]
    assert git(integrator, "rev-parse", f"refs/heads/{BRANCH}") == head
    git(integrator, "fsck", "--connectivity-only", "--no-dangling")


def test_an_outcome_whose_folder_entry_names_a_blob_is_refused(repo: Repo, tmp_path: Path) -> None:
    """A tree entry with a folder's mode naming a blob (git's own check, `rev-list --objects`, refuses
    it): taken whole into a merge it would put a broken tree on the integration branch."""
    import hashlib

    import pygit2

    start, integrator = an_integrator(repo, tmp_path)

    def obj(kind: bytes, data: bytes) -> tuple[str, bytes, bytes]:
        return hashlib.sha1(kind + b" %d\0" % len(data) + data).hexdigest(), kind, data

    blob = obj(b"blob", b"not a folder\n")
    pg = pygit2.Repository(str(repo.path))
    root = pg[pygit2.Oid(hex=start)].peel(pygit2.Commit).tree
    # the root as it was, its folder app/ naming the blob
    tree = obj(b"tree", b"".join(f"{e.filemode:o} {e.name}".encode() + b"\0"
                                 + (bytes.fromhex(blob[0]) if e.name == "app" else e.id.raw) for e in root))
    commit = obj(b"commit", f"tree {tree[0]}\nparent {start}\nauthor A <a@b> 1700000000 +0000\n"
                            f"committer A <a@b> 1700000000 +0000\n\nbroken\n".encode())
    kinds = {b"blob": 3, b"tree": 2, b"commit": 1}
    payload = payload_of([(f"{kinds[k]} {len(d)} {oid}".encode(), d) for oid, k, d in (blob, tree, commit)])

    errors = gitwire.write_branches(wire(integrator), [(BRANCH, Sha(commit[0]), Sha(start), payload)])

    assert errors[0] is not None
    assert git(integrator, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH}") == ""
    assert not gitwire.complete(wire(integrator), [commit[0]], [start])


def test_an_outcome_of_a_large_file_is_checked_whole(repo: Repo, tmp_path: Path) -> None:
    """An honest branch bringing a 20 MB file is whole; without that file's object it is not."""
    repo.write("app/core.py", "VALUE = 10\n")
    start = repo.commit_all("start")
    (repo.path / "data.bin").write_bytes(bytes(range(256)) * (80 * 1024))
    head = repo.commit_all("big")
    assert gitwire.complete(wire(repo.path), [head], [start])
    blob = git(repo.path, "rev-parse", f"{head}:data.bin")
    loose = repo.path / ".git" / "objects" / blob[:2] / blob[2:]
    loose.unlink()
    assert not gitwire.complete(wire(repo.path), [head], [start])
