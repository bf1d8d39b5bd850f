"""Hostile outcomes against the fast path that judges a worker's task branch whole from the objects its
payload carried (`inline.whole_above`), without running git's own check.

The property every test asserts: whenever `whole_above` says True, `git rev-list --objects --quiet HEAD
--not START` succeeds in that repository, and every tree above START reads in git (`git ls-tree`) exactly
as `trees.entries` reads it; `whole_above` never raises and never takes long. Where git refuses, the
tests also say so, so that a refusal for the wrong reason shows.

Each test asserts the SAFE behaviour: it fails when the attack works. Real git and real repositories,
no mocks; raw objects are written with pygit2's `odb.write`, as `inline.apply_objects` writes them."""

from __future__ import annotations

import base64
import hashlib
import random
import re
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pygit2
import pytest
from conftest import Repo, git

from worktree_swarm.git import trees
from worktree_swarm.git.repo import Repo as GitRepo
from test_attacks_inline_check import payload_of, records
from worktree_swarm.remote import gitwire, inline
from worktree_swarm.util.types import BranchName, Sha

BRANCH = BranchName("wswarm/r/t/1")
COMMIT, TREE, BLOB, TAG = 1, 2, 3, 4
KIND_NAMES = {COMMIT: b"commit", TREE: b"tree", BLOB: b"blob", TAG: b"tag"}
Obj = tuple[str, int, bytes]            # (id, kind, data)
Entry = tuple[bytes, bytes, str]        # (mode, name, hex id)
SIGNATURE = b"author A <a@b> 1700000000 +0000\ncommitter A <a@b> 1700000000 +0000\n"
MISSING = "cd" * 20                     # an id no repository here has
SLOW_S = 5.0                            # whole_above must answer within this, whatever it is given (runaway work took 17 s; a loaded 2-CPU machine is slow)


def obj(kind: int, data: bytes) -> Obj:
    return hashlib.sha1(KIND_NAMES[kind] + b" %d\0" % len(data) + data).hexdigest(), kind, data


def raw_tree(*entries: Entry) -> bytes:
    return b"".join(mode + b" " + name + b"\0" + bytes.fromhex(oid) for mode, name, oid in entries)


def git_order(entries: list[Entry]) -> list[Entry]:
    return sorted(entries, key=lambda e: e[1] + b"/" if e[0] == trees.TREE_MODE else e[1])


def tree(*entries: Entry) -> Obj:
    """A tree of ENTRIES in git's order (a test wanting another order writes raw bytes)."""
    return obj(TREE, raw_tree(*git_order(list(entries))))


def commit_data(tree_id: str, *parents: str, msg: bytes = b"x") -> bytes:
    return (f"tree {tree_id}\n".encode() + b"".join(f"parent {p}\n".encode() for p in parents)
            + SIGNATURE + b"\n" + msg + b"\n")


def commit(tree_id: str, *parents: str, msg: bytes = b"x") -> Obj:
    return obj(COMMIT, commit_data(tree_id, *parents, msg=msg))


def carried(*objects: Obj) -> inline.Objects:
    return {oid: (kind, data) for oid, kind, data in objects}


def wire(path: Path) -> GitRepo:
    return GitRepo(root=path, common_dir=path / ".git" if (path / ".git").exists() else path)


def payload(objects: list[Obj]) -> str:
    return base64.b64encode(zlib.compress(b"".join(f"{kind} {len(data)} {oid}\n".encode() + data
                                                   for oid, kind, data in objects))).decode()


def changed(entries: dict[bytes, tuple[bytes, bytes, str]], changes: dict[str, tuple[bytes, str] | None]) -> Obj:
    """A tree of ENTRIES with those named in CHANGES changed (mode, id) or removed (None); `_` is `.`."""
    for name, change in changes.items():
        key = name.replace("_", ".").encode()
        if change is None:
            entries.pop(key, None)
        else:
            entries[key] = (change[0], key, change[1])
    return tree(*entries.values())


@dataclass
class Start:
    """A bare integrator repository holding one trusted commit, START, and its closure:
    README, core.py, pkg/{mod.py, run.sh (755), sub/deep.py}, link (a symlink), vendor (a submodule)."""
    path: Path
    pg: pygit2.Repository
    commit: str
    root: str
    blobs: dict[bytes, str] = field(default_factory=dict)
    trees: dict[bytes, str] = field(default_factory=dict)
    gitlink: str = "ab" * 20

    def write(self, *objects: Obj) -> None:
        for oid, kind, data in objects:
            assert str(self.pg.odb.write(kind, data)) == oid

    def root_entries(self) -> dict[bytes, Entry]:
        listed = trees.entries(self.pg.odb.read(self.root)[1])
        assert listed is not None
        return {name: (mode, name, raw.hex()) for mode, name, raw in listed}

    def root_with(self, **changes: tuple[bytes, str] | None) -> Obj:
        """START's root with the entries named changed (mode, id) or removed (None)."""
        return changed(self.root_entries(), changes)

    def pkg_with(self, **changes: tuple[bytes, str] | None) -> Obj:
        listed = trees.entries(self.pg.odb.read(self.trees[b"pkg"])[1])
        assert listed is not None
        return changed({name: (mode, name, raw.hex()) for mode, name, raw in listed}, changes)


def integrator(tmp_path: Path) -> Start:
    path = tmp_path / "integrator"
    git(tmp_path, "init", "-q", "--bare", str(path))
    pg = pygit2.Repository(str(path))
    blobs = {name: obj(BLOB, text) for name, text in (
        (b"README", b"# readme\n"), (b"core.py", b"VALUE = 1\n"), (b"mod.py", b"def f():\n    return 1\n"),
        (b"run.sh", b"#!/bin/sh\necho hi\n"), (b"deep.py", b"DEEP = True\n"), (b"link", b"core.py"))}
    sub = tree((b"100644", b"deep.py", blobs[b"deep.py"][0]))
    pkg = tree((b"100644", b"mod.py", blobs[b"mod.py"][0]), (b"100755", b"run.sh", blobs[b"run.sh"][0]),
               (b"40000", b"sub", sub[0]))
    gitlink = "ab" * 20
    root = tree((b"100644", b"README", blobs[b"README"][0]), (b"100644", b"core.py", blobs[b"core.py"][0]),
                (b"40000", b"pkg", pkg[0]), (b"120000", b"link", blobs[b"link"][0]), (b"160000", b"vendor", gitlink))
    start_commit = commit(root[0], msg=b"start")
    start = Start(path=path, pg=pg, commit=start_commit[0], root=root[0],
                  blobs={name: b[0] for name, b in blobs.items()}, trees={b"pkg": pkg[0], b"sub": sub[0]})
    start.write(*blobs.values(), sub, pkg, root, start_commit)
    git(path, "update-ref", "refs/heads/main", start.commit)
    assert gitwire.complete(wire(path), [start.commit], [])
    return start


def rev_list_ok(path: Path, head: str, start: str) -> bool:
    return subprocess.run(["git", "rev-list", "--objects", "--quiet", head, "--not", start], cwd=path,
                          capture_output=True).returncode == 0


def git_reads_as_entries(path: Path, head: str, start: str) -> list[str]:
    """The trees above START that git (`ls-tree`) reads otherwise than `trees.entries`; empty when none."""
    listed = subprocess.run(["git", "rev-list", "--objects", "--no-object-names", head, "--not", start], cwd=path,
                            capture_output=True, text=True, check=True).stdout.split()
    if not listed:
        return []
    kinds = subprocess.run(["git", "cat-file", "--batch-check"], cwd=path, input="\n".join(listed) + "\n",
                           capture_output=True, text=True, check=True).stdout.splitlines()
    wrong = []
    for line in kinds:
        oid, kind = line.split()[:2]
        if kind != "tree":
            continue
        data = subprocess.run(["git", "cat-file", "tree", oid], cwd=path, capture_output=True, check=True).stdout
        mine = trees.entries(data)
        ls = subprocess.run(["git", "ls-tree", "-z", oid], cwd=path, capture_output=True)
        if mine is None or ls.returncode != 0:
            wrong.append(oid)
            continue
        theirs = []
        for record in ls.stdout.split(b"\0")[:-1]:
            meta, name = record.split(b"\t", 1)
            mode, _, hexid = meta.split(b" ")
            theirs.append((int(mode, 8), name, bytes.fromhex(hexid.decode())))
        if theirs != [(int(mode, 8), name, raw) for mode, name, raw in mine]:
            wrong.append(oid)
    return wrong


def judge(start: Start, objects: list[Obj], head: str, *, start_id: str | None = None,
          write: bool = True) -> bool:
    """OBJECTS written (as `apply_objects` leaves them) and handed to `whole_above` as carried; the
    property asserted; what it said."""
    if write:
        start.write(*objects)
    base = start.commit if start_id is None else start_id
    began = time.monotonic()
    said = inline.whole_above(wire(start.path), carried(*objects), head, base)
    took = time.monotonic() - began
    assert took < SLOW_S, f"whole_above took {took:.2f} s"
    if said:
        assert rev_list_ok(start.path, head, base), "whole_above vouched for a branch git's rev-list refuses"
        assert git_reads_as_entries(start.path, head, base) == [], "whole_above vouched for a tree git reads otherwise"
    return said


# -- honest branches: the fast path is taken, and is right ----------------------------------------------------

def test_an_honest_line_of_commits_is_judged_whole_without_git(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    deep = obj(BLOB, b"DEEP = False\n")
    sub = tree((b"100644", b"deep.py", deep[0]))
    pkg = s.pkg_with(sub=(b"40000", sub[0]))
    r1 = s.root_with(pkg=(b"40000", pkg[0]))
    c1 = commit(r1[0], s.commit)
    core = obj(BLOB, b"VALUE = 2\n")
    r2 = obj(TREE, r1[2].replace(bytes.fromhex(s.blobs[b"core.py"]), bytes.fromhex(core[0])))
    c2 = commit(r2[0], c1[0])
    c3 = commit(r2[0], c2[0], msg=b"the same tree again")
    assert judge(s, [deep, sub, pkg, r1, c1, core, r2, c2, c3], c3[0])


def test_the_start_itself_is_whole_above_itself(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    assert judge(s, [], s.commit)


def test_a_new_submodule_is_whole_without_its_commit(tmp_path: Path) -> None:
    """git looks for no object of a submodule's commit: a new gitlink needs nothing carried."""
    s = integrator(tmp_path)
    root = s.root_with(other=(b"160000", MISSING), vendor=(b"160000", "ef" * 20))
    head = commit(root[0], s.commit)
    assert judge(s, [root, head], head[0])


def test_an_empty_folder_carried_is_whole(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    empty = obj(TREE, b"")
    root = s.root_with(empty=(b"40000", empty[0]))
    head = commit(root[0], s.commit)
    assert judge(s, [empty, root, head], head[0])


def test_a_blob_kept_under_another_file_mode_is_whole_only_when_carried(tmp_path: Path) -> None:
    """core.py made executable, then a symlink: the same blob (git does not care); not carried, the
    fast path does not know it (git decides)."""
    s = integrator(tmp_path)
    root = s.root_with(core_py=(b"100755", s.blobs[b"core.py"]), README=(b"120000", s.blobs[b"README"]))
    head = commit(root[0], s.commit)
    assert not judge(s, [root, head], head[0])
    blob = (s.blobs[b"core.py"], BLOB, s.pg.odb.read(s.blobs[b"core.py"])[1])
    readme = (s.blobs[b"README"], BLOB, s.pg.odb.read(s.blobs[b"README"])[1])
    assert judge(s, [blob, readme, root, head], head[0])


# -- one object under two kinds --------------------------------------------------------------------------

def test_a_folder_entry_naming_a_carried_blob_is_not_whole(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    blob = obj(BLOB, b"not a folder\n")
    root = s.root_with(pkg=(b"40000", blob[0]))
    head = commit(root[0], s.commit)
    assert not judge(s, [blob, root, head], head[0])
    assert not rev_list_ok(s.path, head[0], s.commit)


def test_a_file_entry_naming_a_carried_tree_is_not_whole(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    inner = tree((b"100644", b"f", s.blobs[b"core.py"]))
    root = s.root_with(core_py=(b"100644", inner[0]))
    head = commit(root[0], s.commit)
    assert not judge(s, [inner, root, head], head[0])


@pytest.mark.parametrize("folder_first", [True, False])
def test_one_carried_id_as_a_folder_and_a_file_is_not_whole(tmp_path: Path, folder_first: bool) -> None:
    s = integrator(tmp_path)
    blob = obj(BLOB, b"both\n")
    inner = tree((b"100644", b"f", blob[0]))
    shared = inner if folder_first else blob
    root = s.root_with(x=(b"40000", shared[0]), y=(b"100644", shared[0]))
    head = commit(root[0], s.commit)
    assert not judge(s, [blob, inner, root, head], head[0])
    assert not rev_list_ok(s.path, head[0], s.commit)


@pytest.mark.parametrize("name, mode", [
    ("vendor", b"100644"), ("vendor", b"40000"),      # the submodule's commit id kept as a file or folder
    ("pkg", b"100644"), ("pkg", b"160000"),           # the folder's tree id as a file, as a submodule
    ("core_py", b"40000"), ("link", b"40000"),        # a file's blob id as a folder
    ("README", b"160000"),
])
def test_an_entry_of_the_start_kept_by_id_under_another_mode_is_not_taken_as_present(
        tmp_path: Path, name: str, mode: bytes) -> None:
    """The id at the same path in the parent is the same, the mode is not: nothing vouches for it."""
    s = integrator(tmp_path)
    old = s.root_entries()[name.replace("_", ".").encode()]
    root = s.root_with(**{name: (mode, old[2])})
    head = commit(root[0], s.commit)
    said = judge(s, [root, head], head[0])
    if mode != b"160000":
        assert not said


def test_a_submodule_entry_turned_into_a_folder_of_the_same_id_in_a_later_commit_is_not_whole(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    r1 = s.root_with(sub=(b"160000", MISSING))
    c1 = commit(r1[0], s.commit)
    r2 = s.root_with(sub=(b"40000", MISSING))
    c2 = commit(r2[0], c1[0])
    assert not judge(s, [r1, c1, r2, c2], c2[0])
    assert not rev_list_ok(s.path, c2[0], s.commit)


def test_entries_naming_commits_are_not_whole(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    start_commit = (s.commit, COMMIT, s.pg.odb.read(s.commit)[1])
    for change in ((b"100644", s.commit), (b"40000", s.commit), (b"120000", s.commit)):
        root = s.root_with(x=change)
        head = commit(root[0], s.commit)
        assert not judge(s, [start_commit, root, head], head[0])


@pytest.mark.parametrize("what", ["start commit", "a blob", "start commit carried", "missing"])
def test_a_commit_whose_tree_is_not_a_carried_tree_is_not_whole(tmp_path: Path, what: str) -> None:
    s = integrator(tmp_path)
    blob = obj(BLOB, b"a tree? no\n")
    start_commit = (s.commit, COMMIT, s.pg.odb.read(s.commit)[1])
    tree_id, extra = {"start commit": (s.commit, []), "a blob": (blob[0], [blob]),
                      "start commit carried": (s.commit, [start_commit]), "missing": (MISSING, [])}[what]
    head = commit(tree_id, s.commit)
    assert not judge(s, [*extra, head], head[0])
    assert not rev_list_ok(s.path, head[0], s.commit)


# -- trees git reads otherwise ----------------------------------------------------------------------------

def _odd_trees(s: Start) -> dict[str, bytes]:
    blob = bytes.fromhex(s.blobs[b"core.py"])
    readme = bytes.fromhex(s.blobs[b"README"])
    pkg = bytes.fromhex(s.trees[b"pkg"])
    good = raw_tree((b"100644", b"a", s.blobs[b"core.py"]))
    return {
        "id cut to 4 bytes": good + b"100644 zz\0" + blob[:4],
        "id cut to 19 bytes": good + b"100644 zz\0" + blob[:19],
        "no id": good + b"100644 zz\0",
        "empty name": b"100644 \0" + blob,
        "empty mode": b" zz\0" + blob,
        "mode not octal": b"1OO644 zz\0" + blob,
        "mode with an 8": b"100648 zz\0" + blob,
        "zero-padded folder mode": b"040000 zz\0" + pkg,
        "zero-padded folder mode naming a blob": b"040000 zz\0" + blob,
        "folder mode with permission bits": b"40755 zz\0" + pkg,
        "old group-writable mode": b"100664 zz\0" + blob,
        "mode 100600": b"100600 zz\0" + blob,
        "mode 100000": b"100000 zz\0" + blob,
        "zero-padded file mode": b"0100644 zz\0" + blob,
        "mode 644": b"644 zz\0" + blob,
        "mode 1": b"1 zz\0" + blob,
        "name .": good + b"100644 .\0" + blob,
        "name ..": b"40000 ..\0" + pkg + good,
        "name with a slash": good + b"100644 z/z\0" + blob,
        "a name twice": good + b"100644 a\0" + readme,
        "a name as file and folder": good + b"40000 a\0" + pkg,
        "out of order": b"100644 b\0" + blob + good,
        "folder sorted as a file": b"40000 a\0" + pkg + b"100644 a.b\0" + blob,
        "a byte past the last entry": good + b"\0",
        "a space past the last entry": good + b" ",
        "a partial entry past the last": good + b"100644 z",
    }


@pytest.mark.parametrize("case", [
    "id cut to 4 bytes", "id cut to 19 bytes", "no id", "empty name", "empty mode", "mode not octal",
    "mode with an 8", "zero-padded folder mode", "zero-padded folder mode naming a blob",
    "folder mode with permission bits", "old group-writable mode", "mode 100600", "mode 100000",
    "zero-padded file mode", "mode 644", "mode 1", "name .", "name ..",
    "name with a slash", "a name twice", "a name as file and folder", "out of order", "folder sorted as a file",
    "a byte past the last entry", "a space past the last entry", "a partial entry past the last",
])
@pytest.mark.parametrize("where", ["root", "nested"])
def test_a_tree_git_reads_otherwise_is_not_whole(tmp_path: Path, case: str, where: str) -> None:
    """Every object the odd tree names is carried: only the way the tree reads can refuse it."""
    s = integrator(tmp_path)
    odd = obj(TREE, _odd_trees(s)[case])
    extra = [(oid, kind, s.pg.odb.read(oid)[1]) for oid, kind in (
        (s.blobs[b"core.py"], BLOB), (s.blobs[b"README"], BLOB), (s.blobs[b"mod.py"], BLOB),
        (s.blobs[b"run.sh"], BLOB), (s.blobs[b"deep.py"], BLOB), (s.trees[b"sub"], TREE), (s.trees[b"pkg"], TREE))]
    if where == "root":
        head = commit(odd[0], s.commit)
        objects = [*extra, odd, head]
    else:
        root = s.root_with(odd=(b"40000", odd[0]))
        head = commit(root[0], s.commit)
        objects = [*extra, odd, root, head]
    assert not judge(s, objects, head[0])


def test_a_well_formed_tree_of_unusual_names_reads_alike(tmp_path: Path) -> None:
    """Names git writes though they look odd (bytes past ASCII, a newline, `...`, `.git`, a name that
    is a prefix of a folder's, a leading space: `100644  x` is the name " x"): the fast path may take
    them only if git reads them the same."""
    s = integrator(tmp_path)
    blob = obj(BLOB, b"odd\n")
    inner = tree((b"100644", b"f", blob[0]))
    root = tree((b"100644", b"\xff\xfe", blob[0]), (b"100644", b"new\nline", blob[0]), (b"100644", b"...", blob[0]),
                (b"100644", b".git", blob[0]), (b"100644", b"a.b", blob[0]), (b"40000", b"a", inner[0]),
                (b"100644", b"a0", blob[0]), (b"100644", b"-", blob[0]), (b"100644", b" lead", blob[0]))
    head = commit(root[0], s.commit)
    assert judge(s, [blob, inner, root, head], head[0])


# -- commits git reads otherwise --------------------------------------------------------------------------

def _commits(s: Start, tree_id: str) -> dict[str, bytes]:
    p, t = s.commit, tree_id
    tail = SIGNATURE + b"\nx\n"
    author, committer = (line + b"\n" for line in SIGNATURE.splitlines())
    return {
        "uppercase tree": f"tree {t.upper()}\nparent {p}\n".encode() + tail,
        "uppercase parent": f"tree {t}\nparent {p.upper()}\n".encode() + tail,
        "two spaces before the parent": f"tree {t}\nparent  {p}\n".encode() + tail,
        "a tab before the parent": f"tree {t}\nparent\t{p}\n".encode() + tail,
        "CRLF": f"tree {t}\r\nparent {p}\r\n".encode() + tail,
        "parent first": f"parent {p}\ntree {t}\n".encode() + tail,
        "no parent": f"tree {t}\n".encode() + tail,
        "two parents": f"tree {t}\nparent {p}\nparent {p}\n".encode() + tail,
        "parent cut short": f"tree {t}\nparent {p[:39]}\n".encode() + tail,
        "parent too long": f"tree {t}\nparent {p}0\n".encode() + tail,
        "a header between tree and parent": f"tree {t}\nencoding utf-8\nparent {p}\n".encode() + tail,
        "leading newline": f"\ntree {t}\nparent {p}\n".encode() + tail,
        "tree, parent and a blank line": f"tree {t}\nparent {p}\n\n".encode(),
        "tree, parent and a byte": f"tree {t}\nparent {p}\nx".encode(),
        "a second parent after the author": f"tree {t}\nparent {p}\n".encode() + author
        + f"parent {MISSING}\n".encode() + committer + b"\nx\n",
        "a second parent after the message": f"tree {t}\nparent {p}\n".encode() + tail + f"parent {MISSING}\n".encode(),
        "a NUL in the message": f"tree {t}\nparent {p}\n".encode() + SIGNATURE + b"\n\0\n",
    }


@pytest.mark.parametrize("case", [
    "uppercase tree", "uppercase parent", "two spaces before the parent", "a tab before the parent", "CRLF",
    "parent first", "no parent", "two parents", "parent cut short", "parent too long",
    "a header between tree and parent", "leading newline", "tree, parent and a blank line", "tree, parent and a byte",
    "a second parent after the author", "a second parent after the message", "a NUL in the message",
])
def test_a_commit_formatted_oddly_is_whole_only_as_git_reads_it(tmp_path: Path, case: str) -> None:
    """A new file carried whole, under a commit git may read otherwise (another parent, no parent, a
    bad object): the fast path may vouch only where git reads the same single parent."""
    s = integrator(tmp_path)
    blob = obj(BLOB, b"new\n")
    root = s.root_with(new=(b"100644", blob[0]))
    head = obj(COMMIT, _commits(s, root[0])[case])
    said = judge(s, [blob, root, head], head[0])
    if case not in ("tree, parent and a blank line", "tree, parent and a byte", "a second parent after the author",
                    "a second parent after the message", "a NUL in the message"):
        assert not said


def test_a_commit_ending_right_after_its_parent_line_is_not_whole(tmp_path: Path) -> None:
    """`tree T\nparent P\n` and nothing more: git 2.39 refuses it ("bad parents in commit": its parser
    wants a byte past the parent line's newline), `_COMMIT_HEAD`'s `(?!parent )` is content with the end
    of the data, so the fast path vouches for a head git cannot read."""
    s = integrator(tmp_path)
    blob = obj(BLOB, b"new\n")
    root = s.root_with(new=(b"100644", blob[0]))
    head = obj(COMMIT, f"tree {root[0]}\nparent {s.commit}\n".encode())
    s.write(blob, root, head)
    assert not rev_list_ok(s.path, head[0], s.commit)            # git: bad parents in commit
    judge(s, [blob, root, head], head[0])


def test_a_head_commit_ending_right_after_its_parent_line_is_refused_end_to_end(tmp_path: Path) -> None:
    """As the head itself it is refused: `apply_objects` reads the head with libgit2, which wants an author."""
    s = integrator(tmp_path)
    blob = obj(BLOB, b"new\n")
    root = s.root_with(new=(b"100644", blob[0]))
    head = obj(COMMIT, f"tree {root[0]}\nparent {s.commit}\n".encode())
    errors = gitwire.write_branches(wire(s.path), [(BRANCH, Sha(head[0]), Sha(s.commit), payload([blob, root, head]))])
    assert errors[0] is not None
    assert git(s.path, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH}") == ""


def test_a_commit_ending_right_after_its_parent_line_below_the_head_is_refused_end_to_end(tmp_path: Path) -> None:
    """The same commit one below an ordinary head, sent as a worker's outcome: only the head is read by
    libgit2 on the way in, the fast path vouches for the line, and write_branches sets the task branch
    with no git check run, though `git rev-list --objects` (the check it replaces) refuses it."""
    s = integrator(tmp_path)
    blob = obj(BLOB, b"new\n")
    root = s.root_with(new=(b"100644", blob[0]))
    bad = obj(COMMIT, f"tree {root[0]}\nparent {s.commit}\n".encode())
    head = commit(root[0], bad[0])
    errors = gitwire.write_branches(wire(s.path), [(BRANCH, Sha(head[0]), Sha(s.commit),
                                                    payload([blob, root, bad, head]))])
    assert not rev_list_ok(s.path, head[0], s.commit)
    assert errors[0] is not None, "write_branches set a branch on a commit git's rev-list refuses"
    assert git(s.path, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH}") == ""


def test_a_commit_under_a_parent_carried_with_a_hole_is_not_whole(tmp_path: Path) -> None:
    """The head is whole over its parent, the parent's tree is not whole: git reads every commit's tree."""
    s = integrator(tmp_path)
    lost = obj(BLOB, b"never carried\n")
    r1 = s.root_with(lost=(b"100644", lost[0]))
    c1 = commit(r1[0], s.commit)
    c2 = commit(s.root, c1[0])          # back to START's tree
    assert not judge(s, [r1, c1, c2], c2[0])
    assert not rev_list_ok(s.path, c2[0], s.commit)


def test_a_commit_whose_intermediate_tree_is_missing_is_not_whole(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    blob = obj(BLOB, b"new\n")
    r1 = s.root_with(new=(b"100644", blob[0]))
    c1 = commit(r1[0], s.commit)
    r2 = s.root_with(new=(b"100644", blob[0]), more=(b"100644", blob[0]))
    c2 = commit(r2[0], c1[0])
    assert not judge(s, [blob, c1, r2, c2], c2[0])
    assert not rev_list_ok(s.path, c2[0], s.commit)


# -- what is here but was not carried ---------------------------------------------------------------------

@pytest.mark.parametrize("left", ["blob", "tree", "parent commit", "parent commit and its tree"])
def test_objects_here_but_not_carried_do_not_vouch(tmp_path: Path, left: str) -> None:
    """Left by an earlier outcome (refused: its commit is here, dangling, not whole): present, but not
    carried by this payload, so nothing shows them whole."""
    s = integrator(tmp_path)
    secret = obj(BLOB, b"the blob the first outcome never carried\n")
    new = obj(BLOB, b"new\n")
    r1 = s.root_with(secret=(b"100644", secret[0]))
    c1 = commit(r1[0], s.commit)
    s.write(r1, c1)                     # the refused outcome's leftovers (not its blob)
    r2 = s.root_with(secret=(b"100644", secret[0]), new=(b"100644", new[0]))
    c2 = commit(r2[0], c1[0])
    sent = {"blob": [new, r1, c1, r2, c2], "tree": [new, c1, r2, c2], "parent commit": [new, r1, r2, c2],
            "parent commit and its tree": [new, r2, c2]}[left]
    assert not judge(s, sent, c2[0])
    assert not rev_list_ok(s.path, c2[0], s.commit)


def test_a_folder_of_the_start_moved_elsewhere_must_be_carried(tmp_path: Path) -> None:
    """pkg/ (START's, whole here) also at pkg2/: git takes it, the fast path compares by path only."""
    s = integrator(tmp_path)
    root = s.root_with(pkg2=(b"40000", s.trees[b"pkg"]))
    head = commit(root[0], s.commit)
    assert not judge(s, [root, head], head[0])
    assert rev_list_ok(s.path, head[0], s.commit)       # git's check decides, and takes it


def test_a_folder_removed_then_brought_back_from_the_start_must_be_carried(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    r1 = s.root_with(pkg=None)
    c1 = commit(r1[0], s.commit)
    c2 = commit(s.root, c1[0])
    assert not judge(s, [r1, c1, c2], c2[0])
    assert rev_list_ok(s.path, c2[0], s.commit)


def test_a_file_turned_folder_turned_back_compares_with_its_parent_not_the_start(tmp_path: Path) -> None:
    """core.py becomes a folder holding a missing blob, then START's file again: the second commit's tree
    is whole only because the first's is checked too."""
    s = integrator(tmp_path)
    hidden = obj(BLOB, b"hidden\n")
    folder = tree((b"100644", b"x", hidden[0]))
    r1 = s.root_with(core_py=(b"40000", folder[0]))
    c1 = commit(r1[0], s.commit)
    c2 = commit(s.root, c1[0])
    assert not judge(s, [folder, r1, c1, c2], c2[0])
    assert not rev_list_ok(s.path, c2[0], s.commit)
    assert not judge(s, [hidden, folder, r1, c1, c2], c2[0])       # START's root and core.py: not c1's
    core = (s.blobs[b"core.py"], BLOB, s.pg.odb.read(s.blobs[b"core.py"])[1])
    root = (s.root, TREE, s.pg.odb.read(s.root)[1])
    assert not judge(s, [hidden, folder, r1, c1, root, c2], c2[0])
    assert judge(s, [hidden, folder, r1, c1, core, root, c2], c2[0])


# -- the start is not what it should be -------------------------------------------------------------------

@pytest.mark.parametrize("what", ["tree", "blob", "missing", "not hex", "uppercase", "prefix", "empty"])
def test_a_start_that_is_not_a_commit_here_is_not_vouched_for_and_raises_nothing(tmp_path: Path, what: str) -> None:
    s = integrator(tmp_path)
    base = {"tree": s.root, "blob": s.blobs[b"core.py"], "missing": MISSING, "not hex": "zz" * 20,
            "uppercase": s.commit.upper(), "prefix": s.commit[:12], "empty": ""}[what]
    head = obj(COMMIT, f"tree {s.root}\nparent {base}\n".encode() + SIGNATURE + b"\nx\n")
    assert not judge(s, [head], head[0], start_id=base)
    if inline.whole_above(wire(s.path), {}, base, base):         # the head is the start: nothing above it
        assert rev_list_ok(s.path, base, base)


def test_a_start_that_is_an_annotated_tag_is_not_vouched_for(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    tag = obj(TAG, f"object {s.commit}\ntype commit\ntag v1\ntagger A <a@b> 1700000000 +0000\n\nt\n".encode())
    s.write(tag)
    head = commit(s.root, tag[0])
    judge(s, [head], head[0], start_id=tag[0])


# -- exceptions and time -----------------------------------------------------------------------------------

def test_objects_of_the_wrong_kind_or_empty_data_raise_nothing(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    empty_commit = obj(COMMIT, b"")
    garbage_tree = obj(TREE, b"\xff" * 50)
    head = commit(garbage_tree[0], s.commit)
    assert not judge(s, [empty_commit], empty_commit[0])
    assert not judge(s, [garbage_tree, head], head[0])
    assert not inline.whole_above(wire(s.path), {head[0]: (BLOB, head[2])}, head[0], s.commit)
    assert not inline.whole_above(wire(s.path), {}, MISSING, s.commit)
    assert not inline.whole_above(wire(s.path), {}, "", s.commit)


def test_a_line_of_64_commits_is_judged_and_one_more_goes_to_git(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    objects: list[Obj] = []
    parent = s.commit
    for i in range(65):
        blob = obj(BLOB, b"%d\n" % i)
        root = s.root_with(n=(b"100644", blob[0]))
        c = commit(root[0], parent)
        objects += [blob, root, c]
        parent = c[0]
    assert judge(s, objects[:64 * 3], objects[64 * 3 - 1][0])
    assert not judge(s, objects, parent)
    assert rev_list_ok(s.path, parent, s.commit)


def _nested(depth: int, leaf: Obj) -> list[Obj]:
    out = [leaf]
    for _ in range(depth):
        out.append(tree((b"40000", b"d", out[-1][0])))
    return out


@pytest.mark.parametrize("depth", [99, 100, 101, 500])
def test_deep_folders_are_judged_to_a_depth_and_raise_nothing(tmp_path: Path, depth: int) -> None:
    s = integrator(tmp_path)
    blob = obj(BLOB, b"deep\n")
    chain = _nested(depth, tree((b"100644", b"f", blob[0])))
    root = s.root_with(d=(b"40000", chain[-1][0]))
    head = commit(root[0], s.commit)
    said = judge(s, [blob, *chain, root, head], head[0])
    assert said == (depth <= 99)


def test_a_tree_past_the_byte_budget_is_left_to_git_quickly(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    blob = obj(BLOB, b"x\n")
    big = tree(*[(b"100644", b"f%07d" % i, blob[0]) for i in range(130_000)])     # ~4.3 MB
    root = s.root_with(big=(b"40000", big[0]))
    head = commit(root[0], s.commit)
    assert not judge(s, [blob, big, root, head], head[0])


def _fan_out(s: Start, leaf: Entry) -> list[Obj]:
    """A root of ~580 folders, each the same folder of 253 entries naming LEAF: 4 MB of trees to read
    the way the fast path reads them (each path again), a few KB to send."""
    ones = sorted(bytes([c]) for c in range(1, 256) if c not in (0, ord("/"), ord(".")))
    twos = sorted(a + b for a in ones[:60] for b in ones[:60])
    shared = tree(*[(leaf[0], name, leaf[2]) for name in ones])
    count = (inline._WHOLE_BYTES_MAX - 4096) // (len(shared[2]) + 30)
    root = tree(*[(b"40000", name, shared[0]) for name in twos[:count]])
    return [shared, root]


@pytest.mark.parametrize("leaf", ["empty folder", "blob", "submodule"])
def test_one_small_folder_named_from_every_path_is_judged_in_time(tmp_path: Path, leaf: str) -> None:
    """git reads each object once (`rev-list` marks what it has seen: ~3 ms); so does the fast path, each
    tree once for what its path held before, every look charged at least a few hundred bytes of its
    budget (an empty folder is 0 bytes: ~150,000 looks for a 5 KB payload otherwise)."""
    s = integrator(tmp_path)
    empty, blob = obj(TREE, b""), obj(BLOB, b"x\n")
    entry = {"empty folder": (b"40000", b"", empty[0]), "blob": (b"100644", b"", blob[0]),
             "submodule": (b"160000", b"", MISSING)}[leaf]
    shared, fan = _fan_out(s, entry)
    root = s.root_with(fan=(b"40000", fan[0]))
    head = commit(root[0], s.commit)
    objects = [empty, blob, shared, fan, root, head]
    assert len(payload(objects)) < 16 * 1024
    judge(s, objects, head[0])      # asserts the time bound (and the property, if True)


def test_many_commits_over_a_large_uncached_start_folder_are_judged_in_time(tmp_path: Path) -> None:
    """START holds a folder of 6,000 files (too large for the parsed-tree cache): each of 16 commits
    adds one file to it, so each is compared with a folder read and parsed again from the store."""
    path = tmp_path / "integrator"
    git(tmp_path, "init", "-q", "--bare", str(path))
    pg = pygit2.Repository(str(path))
    blob = obj(BLOB, b"x\n")
    files = [(b"100644", b"f%05d" % i, blob[0]) for i in range(6000)]
    big = tree(*files)
    root = tree((b"40000", b"big", big[0]))
    start_commit = commit(root[0], msg=b"start")
    s = Start(path=path, pg=pg, commit=start_commit[0], root=root[0])
    s.write(blob, big, root, start_commit)
    objects: list[Obj] = []
    parent = s.commit
    for i in range(16):
        new = obj(BLOB, b"%d\n" % i)
        folder = tree(*files, (b"100644", b"g%02d" % i, new[0]))
        top = tree((b"40000", b"big", folder[0]))
        c = commit(top[0], parent)
        objects += [new, folder, top, c]
        parent = c[0]
    judge(s, objects, parent)


# -- many random lines of commits over the start ----------------------------------------------------------

_ANY_ENTRY = re.compile(rb"([0-7]+) ([^\0]*)\0(.{20})", re.S)


def _mutated(s: Start, rng: random.Random, tree_id: str | None, pool: dict[str, Obj], sent: list[Obj],
             depth: int) -> str:
    """A tree made from TREE_ID by a change or two (some git takes, some not), carried (mostly)."""
    data = pool[tree_id][2] if tree_id in pool and pool[tree_id][1] == TREE else b""
    entries = {name: (mode, name, raw.hex()) for mode, name, raw in _ANY_ENTRY.findall(data)}
    for _ in range(rng.randrange(1, 3)):
        name = rng.choice([*entries, b"new", b"core.py", b"pkg", b"sub"])
        mode, _, oid = entries.get(name, (b"100644", name, s.blobs[b"README"]))
        op = rng.randrange(9)
        if op == 0:
            blob = obj(BLOB, b"v%d\n" % rng.randrange(4))
            pool[blob[0]] = blob
            if rng.random() < 0.9:
                sent.append(blob)
            entries[name] = (rng.choice([b"100644", b"100755", b"120000"]), name, blob[0])
        elif op == 1:
            entries[name] = (rng.choice([b"100644", b"100755", b"120000", b"160000", b"40000"]), name, oid)
        elif op == 2 and depth < 4:
            entries[name] = (b"40000", name, _mutated(s, rng, oid if mode == b"40000" else None, pool, sent, depth + 1))
        elif op == 3:
            entries.pop(name, None)
        elif op == 4:
            entries[name] = rng.choice([(b"40000", name, t) for t in s.trees.values()]
                                       + [(b"100644", name, b) for b in s.blobs.values()])
        elif op == 5:
            entries[name] = (b"160000", name, rng.choice([MISSING, s.commit, *s.blobs.values(), *s.trees.values()]))
        elif op == 6:
            entries[name] = (rng.choice([b"100664", b"040000", b"40755", b"0100644"]), name, oid)
        elif op == 7:
            entries[name] = (mode, name, rng.choice([MISSING, *pool]))
        else:
            empty = obj(TREE, b"")
            pool[empty[0]] = empty
            if rng.random() < 0.8:
                sent.append(empty)
            entries[name] = (b"40000", name, empty[0])
    made = tree(*entries.values())
    pool[made[0]] = made
    if rng.random() < 0.95:
        sent.append(made)
    return made[0]


@pytest.mark.parametrize("seeds", [range(i, i + 40) for i in range(0, 160, 40)], ids=lambda r: f"{r.start}")
def test_random_lines_of_commits_hold_the_property(tmp_path: Path, seeds: range) -> None:
    """Lines of one to four commits, each changing the last tree a little (new blobs, a kept id under
    another mode, folders, submodules, odd modes, objects of the start, missing ones, empty folders),
    an object or so not carried: whatever whole_above says True, git agrees."""
    vouched = 0
    for seed in seeds:
        rng = random.Random(seed)
        (tmp_path / str(seed)).mkdir()
        s = integrator(tmp_path / str(seed))
        pool = {oid: (oid, kind, s.pg.odb.read(oid)[1]) for oid, kind in
                [(s.root, TREE), *((t, TREE) for t in s.trees.values()), *((b, BLOB) for b in s.blobs.values())]}
        sent: list[Obj] = []
        root, parent = s.root, s.commit
        for _ in range(rng.randrange(1, 5)):
            if rng.random() < 0.85:
                root = _mutated(s, rng, root, pool, sent, 0)
            made = commit(root, parent, msg=b"%d" % len(sent))
            sent.append(made)
            parent = made[0]
        if rng.random() < 0.2 and len(sent) > 1:
            left = rng.choice(sent[:-1])
            s.write(left)                   # here (left by an earlier outcome), not carried
            sent.remove(left)
        for o in sent:
            s.write(o)
        vouched += judge(s, sent, parent, write=False)
    assert vouched > 0


# -- end to end: a sender's objects_since, the integrator's write_branches -----------------------------------

def an_integrator(repo: Repo, tmp_path: Path) -> tuple[str, Path]:
    """A start commit, and an integrator's store holding it (a bare clone)."""
    repo.write("app/core.py", "VALUE = 10\n")
    repo.write("app/deep/er/x.py", "X = 1\n")
    start = repo.commit_all("start")
    integrator_path = tmp_path / "integrator"
    git(tmp_path, "clone", "-q", "--bare", str(repo.path), str(integrator_path))
    return start, integrator_path


def test_an_honest_branch_sent_inline_takes_the_fast_path_and_is_set(repo: Repo, tmp_path: Path) -> None:
    start, integrator_path = an_integrator(repo, tmp_path)
    repo.write("app/deep/er/x.py", "X = 2\n")
    repo.write("app/new/page.md", "# new\n")
    repo.commit_all("one")
    repo.write("app/core.py", "VALUE = 11\n")
    head = repo.commit_all("two")
    sent = inline.objects_since(wire(repo.path), head, start)
    assert sent is not None
    objects = inline.apply_objects(wire(integrator_path), head, sent, pack_from=inline.PACK_FROM_USER)
    assert objects is not None
    assert inline.whole_above(wire(integrator_path), objects, head, start)
    assert rev_list_ok(integrator_path, head, start)
    assert git_reads_as_entries(integrator_path, head, start) == []
    assert gitwire.write_branches(wire(integrator_path), [(BRANCH, Sha(head), Sha(start), sent)]) == [None]
    assert git(integrator_path, "rev-parse", f"refs/heads/{BRANCH}") == head


def test_a_branch_with_a_merge_is_left_to_git_and_set(repo: Repo, tmp_path: Path) -> None:
    start, integrator_path = an_integrator(repo, tmp_path)
    repo.git("switch", "-q", "-c", "side")
    repo.write("app/side.py", "S = 1\n")
    repo.commit_all("side")
    repo.git("switch", "-q", "main")
    repo.write("app/main.py", "M = 1\n")
    repo.commit_all("main")
    repo.git("merge", "-q", "--no-ff", "-m", "merge", "side")
    head = repo.git("rev-parse", "HEAD")
    sent = inline.objects_since(wire(repo.path), head, start)
    assert sent is not None
    objects = inline.apply_objects(wire(integrator_path), head, sent, pack_from=inline.PACK_FROM_USER)
    assert objects is not None
    assert not inline.whole_above(wire(integrator_path), objects, head, start)
    assert gitwire.write_branches(wire(integrator_path), [(BRANCH, Sha(head), Sha(start), sent)]) == [None]


@pytest.mark.parametrize("drop", ["new blob", "changed blob", "a new folder", "the first commit's tree"])
def test_an_honest_payload_with_an_object_dropped_is_refused_end_to_end(repo: Repo, tmp_path: Path,
                                                                       drop: str) -> None:
    start, integrator_path = an_integrator(repo, tmp_path)
    repo.write("app/deep/er/x.py", "X = 3\n")
    repo.write("app/new/page.md", "# new page\n")
    first = repo.commit_all("one")
    repo.write("app/core.py", "VALUE = 12\n")
    head = repo.commit_all("two")
    sent = inline.objects_since(wire(repo.path), head, start)
    assert sent is not None
    dropped = {"new blob": f"{first}:app/new/page.md", "changed blob": f"{first}:app/deep/er/x.py",
               "a new folder": f"{first}:app/new", "the first commit's tree": f"{first}^{{tree}}"}[drop]
    gone = git(repo.path, "rev-parse", dropped).encode()
    holed = payload_of([r for r in records(sent) if not r[0].endswith(gone)])
    errors = gitwire.write_branches(wire(integrator_path), [(BRANCH, Sha(head), Sha(start), holed)])
    assert errors[0] is not None
    assert git(integrator_path, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH}") == ""


def test_a_refused_outcome_then_its_child_with_its_objects_sent_again_but_one(repo: Repo, tmp_path: Path) -> None:
    """Outcome 1 lacks its new file's blob: refused, its commit and tree left here. Outcome 2 re-sends
    outcome 1's commit and tree (here already: not written again) and its own, still without that blob."""
    start, integrator_path = an_integrator(repo, tmp_path)
    repo.write("app/secret.py", "S = 'never sent'\n")
    first = repo.commit_all("first")
    repo.write("app/core.py", "VALUE = 13\n")
    second = repo.commit_all("second")
    secret = git(repo.path, "rev-parse", f"{first}:app/secret.py").encode()

    whole1 = inline.objects_since(wire(repo.path), first, start)
    assert whole1 is not None
    holed1 = payload_of([r for r in records(whole1) if not r[0].endswith(secret)])
    assert gitwire.write_branches(wire(integrator_path), [(BRANCH, Sha(first), Sha(start), holed1)])[0] is not None
    assert inline.has_commit(wire(integrator_path), first)

    whole2 = inline.objects_since(wire(repo.path), second, start)
    assert whole2 is not None
    holed2 = payload_of([r for r in records(whole2) if not r[0].endswith(secret)])
    objects = inline.apply_objects(wire(integrator_path), second, holed2, pack_from=inline.PACK_FROM_USER)
    assert objects is not None
    assert not inline.whole_above(wire(integrator_path), objects, second, start)
    errors = gitwire.write_branches(wire(integrator_path), [(BRANCH, Sha(second), Sha(start), holed2)])
    assert errors[0] is not None
    assert git(integrator_path, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH}") == ""


def test_a_crafted_payload_whose_folder_names_a_blob_is_refused_end_to_end(tmp_path: Path) -> None:
    s = integrator(tmp_path)
    blob = obj(BLOB, b"not a folder\n")
    root = s.root_with(pkg=(b"40000", blob[0]))
    head = commit(root[0], s.commit)
    errors = gitwire.write_branches(wire(s.path), [(BRANCH, Sha(head[0]), Sha(s.commit),
                                                    payload([blob, root, head]))])
    assert errors[0] is not None
    assert not rev_list_ok(s.path, head[0], s.commit)
    assert git(s.path, "for-each-ref", "--format=%(refname)", f"refs/heads/{BRANCH}") == ""


def test_a_crafted_payload_of_a_fan_out_is_written_in_time(tmp_path: Path) -> None:
    """The fan-out of folders sent as a real outcome: the whole write (apply, judge, set) stays quick."""
    s = integrator(tmp_path)
    empty = obj(TREE, b"")
    shared, fan = _fan_out(s, (b"40000", b"", empty[0]))
    root = s.root_with(fan=(b"40000", fan[0]))
    head = commit(root[0], s.commit)
    sent = payload([empty, shared, fan, root, head])
    began = time.monotonic()
    errors = gitwire.write_branches(wire(s.path), [(BRANCH, Sha(head[0]), Sha(s.commit), sent)])
    took = time.monotonic() - began
    assert errors == [None]
    assert took < SLOW_S, f"write_branches took {took:.2f} s for a {len(sent)}-byte payload"
