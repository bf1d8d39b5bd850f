"""The few git objects that travel inside a request or an outcome instead of through the remote:
packed by the sender (`objects_since`, `StartChain`), each checked against its id and written by the
receiver (`apply_objects`)."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import zlib
from typing import TYPE_CHECKING

from worktree_swarm.git import trees
from worktree_swarm.git.repo import Repo
from worktree_swarm.util import proc
from worktree_swarm.util.errors import CommandError
from worktree_swarm.util.types import is_full_id

if TYPE_CHECKING:
    import pygit2

# A new start commit is a merge or two away from the one before, a task branch a commit or two from
# its start: a handful of objects. Sent with the request (the outcome), they spare the request the wait
# for the push and the worker its fetch (the worker its push and the integrator its fetch): two git
# round trips on the path of every dispatch (every merge). A payload is one or more segments joined by
# "." (base64 never writes one), each the objects one commit adds beyond another, compressed alone.

# What a receiver judges whole by the objects a payload carried, without git (`whole_above`): the line of
# commits, the bytes of trees read (~30 ms of parsing) and the depth of folders.
_WHOLE_LINE_MAX = 64
_WHOLE_BYTES_MAX = 4 * 1024 * 1024
_WHOLE_DEPTH_MAX = 100
_WHOLE_VISIT_BYTES = 256        # what looking at a tree costs at least, however small (an empty one is 0 bytes)
# A commit of one parent as wswarm and git write them (git refuses one ending after its parent line).
_COMMIT_HEAD = re.compile(rb"tree ([0-9a-f]{40})\nparent ([0-9a-f]{40})\n(?=author )")
INLINE_BYTES = 64 * 1024        # compressed, per payload; a commit bringing more goes through the remote alone
_UNPACKED_MAX = 64 * 1024 * 1024
_RAW_MAX = 16 * INLINE_BYTES     # send no more: this much would not compress into INLINE_BYTES
_READ_MAX = 16 * _RAW_MAX        # read no further: not even as changes of what the receiver has would it fit
_COMMIT = 1                      # libgit2's object type numbers: 1 commit, 2 tree, 3 blob
_TREE = 2
_BLOB = 3
_TREE_MODE = trees.TREE_MODE
_GITLINK = b"160000"
_DELTA = 10                      # a record of kind 10 + K: an object of kind K sent as a change of another
# Objects not here yet from which a payload is written as a pack: a worker's clone is wswarm's own (kept
# by `maintain`); the user's repository is kept loose below git's own fetch limit (transfer.unpackLimit).
PACK_FROM_WORKER = 8
PACK_FROM_USER = 100
# Base64 of INLINE_BYTES, and a separator per segment: no sender makes a longer payload.
_PAYLOAD_MAX = 4 * INLINE_BYTES // 3 + 4 + 64


def objects_since(repo: Repo, sha: str, base: str) -> str | None:
    """The objects commit SHA brings beyond the closure of commit BASE, packed for `apply_objects`;
    None when they do not fit in INLINE_BYTES, or BASE is not here."""
    packed = _packed(repo, sha, base)
    return None if packed is None else base64.b64encode(packed).decode()


def _packed(repo: Repo, sha: str, base: str) -> bytes | None:
    try:
        found = _between(repo, sha, base)
    except _PastLimit:
        return None
    if found is None:
        return None
    objects, bases = found
    if [oid for oid, (kind, _) in objects.items() if kind == _COMMIT][-1:] != [sha]:
        return None
    odb = repo.pygit.odb
    commits: list[bytes] = []
    others: list[bytes] = []
    raw = 0
    for oid, (kind, data) in objects.items():
        body = _delta(odb.read(bases[oid])[1], data, bases[oid]) if oid in bases else None
        record = (f"{kind} {len(data)} {oid}\n".encode() + data if body is None
                  else f"{kind + _DELTA} {len(body)} {oid}\n".encode() + body)
        (commits if kind == _COMMIT else others).append(record)
        raw += len(record)
        if raw > _RAW_MAX:
            return None
    out = zlib.compressobj(6)
    chunks, size = [], 0
    for record in others + commits:
        chunk = out.compress(record)
        size += len(chunk)
        if size > INLINE_BYTES:
            return None
        chunks.append(chunk)
    packed = b"".join(chunks) + out.flush()
    return packed if len(packed) <= INLINE_BYTES else None


class _PastLimit(Exception):
    """The objects read passed the bytes allowed."""


def _between(repo: Repo, sha: str, base: str) -> tuple[dict[str, tuple[int, bytes]], dict[str, str]] | None:
    """The objects (kind, data by id) of the commits from BASE (excluded) to SHA, parents first, and of
    the trees and blobs each adds to its first parent's tree; and for those trees and blobs, the object
    of their kind at the same path in that tree, where it is not among them (the receiver has it: a folder
    of a thousand files that gained one is sent as its change from that one, not whole again): `rev-list --objects SHA ^BASE` or a few
    more (an object back again after a change is sent again), in this process (that git process cost
    ~4 ms of CPU a call at 5,000 files; this ~0.3). None when one is not here or is not of the kind its
    tree entry says; _PastLimit past _READ_MAX bytes read (the parents' trees compared with counted).
    What a sender packs: the receiver's check is git's (`gitwire.write_branches`), which reads trees as
    git does where this one does not (odd modes, an id cut short).
    Trees are compared as bytes: pygit2 keeps every name a tree is looked up by (`tree[name]`), which
    over a thousand-task run was hundreds of MB."""
    import pygit2
    from pygit2.enums import SortMode

    odb = repo.pygit.odb
    objects: dict[str, tuple[int, bytes]] = {}
    same_path: dict[str, str] = {}
    commits: list[str] = []
    read = 0
    try:
        walker = repo.pygit.walk(pygit2.Oid(hex=sha), SortMode.TOPOLOGICAL | SortMode.REVERSE)
        walker.hide(pygit2.Oid(hex=base))
        for commit in walker:
            commits.append(str(commit.id))
            parent = commit.parents[0].tree_id if commit.parent_ids else None
            todo = [(str(commit.tree_id), None if parent is None else str(parent), _TREE)]
            while todo:
                new, old, kind = todo.pop()
                if new == old or new in objects:
                    continue
                objects[new] = odb.read(new)
                read += len(objects[new][1])
                if read > _READ_MAX:
                    raise _PastLimit
                if objects[new][0] != kind:         # a tree entry naming a blob, or the reverse
                    return None
                if old is not None:
                    same_path[new] = old
                if kind != _TREE:
                    continue
                # Parsed once for the merge that wrote them, mostly (`trees.PARSED`)
                before: dict[bytes, trees.Entry] = {}
                if old is not None:
                    was = trees.PARSED.get(odb, bytes.fromhex(old))
                    if was is None:
                        return None
                    before, size = was
                    read += size
                now = trees.PARSED.get(odb, bytes.fromhex(new), data=objects[new][1])
                if now is None:
                    return None
                for name, (mode, raw) in now[0].items():
                    mode_then, then = before.get(name, (b"", b""))
                    if mode == _GITLINK or then == raw:
                        continue        # a submodule's commit is not an object of this repository
                    alike = then and (mode == _TREE_MODE) == (mode_then == _TREE_MODE)
                    todo.append((raw.hex(), then.hex() if alike else None, _TREE if mode == _TREE_MODE else _BLOB))
        for oid in commits:
            objects[oid] = odb.read(oid)
            read += len(objects[oid][1])
            if read > _READ_MAX:
                raise _PastLimit
    except (KeyError, ValueError, pygit2.GitError):   # not here (a shallow clone's edge; BASE unknown)
        return None
    return objects, {new: old for new, old in same_path.items() if old not in objects}


def _delta(base: bytes, data: bytes, base_id: str) -> bytes | None:
    """DATA as BASE_ID's bytes with their middle replaced (`<base> <prefix> <suffix>` and the new
    middle); None when that saves less than half."""
    most = min(len(base), len(data))
    low, high = 0, most                     # the longest common prefix, by halving (each look a memcmp)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if base[:mid] == data[:mid] else (low, mid - 1)
    prefix = low
    low, high = 0, most - prefix            # the longest common suffix beside it
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if base[len(base) - mid:] == data[len(data) - mid:] else (low, mid - 1)
    suffix = low
    body = f"{base_id} {prefix} {suffix}\n".encode() + data[prefix:len(data) - suffix]
    return body if 2 * len(body) < len(data) else None


class StartChain:
    """The start commits sent lately, each with the objects it adds beyond the one before (computed
    once, when it is new): a new start's payload is the segments back to the oldest start that fits in
    INLINE_BYTES (the oldest: more workers have it). One thread's."""

    def __init__(self, repo: Repo, *, keep: int) -> None:
        self.repo = repo
        self.keep = keep
        self._chain: list[tuple[str, bytes | None]] = []    # (start, its objects beyond the one before)

    def add(self, sha: str) -> tuple[str, str] | None:
        """SHA is the newest start: (base, payload) for its request, or None (it goes through the remote)."""
        before = self._chain[-1][0] if self._chain else None
        self._chain = (self._chain + [(sha, None if before is None else _packed(self.repo, sha, before))])[-self.keep:]
        segments: list[bytes] = []
        base, size = None, 0
        for i in range(len(self._chain) - 1, 0, -1):
            segment = self._chain[i][1]
            if segment is None or size + len(segment) > INLINE_BYTES:
                break
            segments.insert(0, segment)
            size += len(segment)
            base = self._chain[i - 1][0]
        if base is None:
            return None
        return base, ".".join(base64.b64encode(s).decode() for s in segments)


Objects = dict[str, tuple[int, bytes]]      # (kind, data) by id


def apply_objects(repo: Repo, sha: str, payload: str, *, pack_from: int) -> Objects | None:
    """Write the objects of an `objects_since` or `StartChain` PAYLOAD here (each must hash to the id it
    claims); when commit SHA, in full, is one of the commits it carries and is here afterwards, the
    objects it carried (but those of segments here already), else None.
    PACK_FROM objects or more not here yet go into one pack, fewer are written loose, commits last
    (a commit present is one whose closure is). A payload larger than any a sender makes is refused unread."""
    # The commit must come with the payload: a sender naming a commit this repository has, but it
    # never saw (the user's stash; found by a prefix of its id), would have its branch set there.
    if not is_full_id(sha) or len(payload) > _PAYLOAD_MAX:
        return None
    odb = repo.pygit.odb
    budget = _UNPACKED_MAX
    carried: set[str] = set()
    seen: Objects = {}            # the payload's objects, bases of later changes
    missing: Objects = {}
    segments = payload.split(".")
    for i, segment in enumerate(segments):
        try:
            raw = zlib.decompressobj().decompress(base64.b64decode(segment, validate=True), budget)
        except (ValueError, zlib.error):
            return None
        budget -= len(raw)
        if budget <= 0:
            return None
        records = _records(raw)
        if records is None:
            return None
        # A segment before the last whose commit is here already is here whole (a commit present is one
        # whose closure is): a payload reaches back many starts, and a receiver mostly has all but the
        # last few. Nothing of it counts as carried.
        if (i < len(segments) - 1 and records and records[-1][0] == _COMMIT and is_full_id(records[-1][1])
                and records[-1][1] in odb):
            continue
        for number, claimed, data in records:
            if number > _DELTA:
                number -= _DELTA
                whole = _undelta(data, number, seen, odb, budget)
                if whole is None:
                    return None
                data, budget = whole[0], budget - whole[1]
                if budget <= 0:
                    return None
            # Every object is what it claims before any is written. One this clone has already is not
            # written again: libgit2 writes a temporary file even then. Whatever is written is hashed
            # again by git, with collision detection.
            if _sha1(number, data) != claimed:
                return None
            seen[claimed] = (number, data)
            if claimed not in missing and claimed not in odb:
                missing[claimed] = (number, data)
            if number == _COMMIT:
                carried.add(claimed)
    if sha not in carried:
        return None
    if len(missing) >= pack_from:
        try:
            _index_pack(repo, list(missing.values()))
        except CommandError:        # git refused it (a full disk, say): the start or branch comes another way
            return None
    else:
        # Commits last, whatever order a sender chose: a commit here is one whose closure is.
        for claimed, (number, data) in sorted(missing.items(), key=lambda item: item[1][0] == _COMMIT):
            if str(odb.write(number, data)) != claimed:
                return None
    return seen if has_commit(repo, sha) else None


def whole_above(repo: Repo, objects: Objects, head: str, start: str) -> bool:
    """Whether HEAD's history and trees above START are here whole, as git reads them, by OBJECTS (what
    a payload carried, written here) alone: a line of single-parent commits down to START, each of their
    trees' entries as at its path in the parent commit's tree (START's closure is whole here) or carried,
    of the kind its mode says, and read as git writes trees. False: not shown so (git's check decides),
    for anything else or past _WHOLE_BYTES_MAX of trees read."""
    import pygit2

    trees_up: list[str] = []
    at = head
    while at != start:
        kind, data = objects.get(at, (0, b""))
        found = _COMMIT_HEAD.match(data) if kind == _COMMIT and len(trees_up) < _WHOLE_LINE_MAX else None
        if found is None:
            return False
        trees_up.append(found[1].decode())
        at = found[2].decode()
    try:
        below_commit = repo.pygit[pygit2.Oid(hex=start)]
        if not isinstance(below_commit, pygit2.Commit):        # git takes no tag for a parent
            return False
        below = str(below_commit.tree_id)
        judge = _Whole(repo.pygit.odb, objects)
        for tree in reversed(trees_up):
            if tree != below and not judge.tree(tree, below, 0):
                return False
            below = tree
    except (KeyError, ValueError, pygit2.GitError):     # START's closure is not here whole after all
        return False
    return True


class _Whole:
    """`whole_above`'s look at carried trees: each (tree, what its path held in the parent commit) once,
    within _WHOLE_BYTES_MAX of trees read, each look costing at least _WHOLE_VISIT_BYTES."""

    def __init__(self, odb: pygit2.Odb, objects: Objects) -> None:
        self.odb = odb
        self.objects = objects
        self.budget = _WHOLE_BYTES_MAX
        self.judged: set[tuple[str, str | None]] = set()

    def tree(self, tree: str, then: str | None, depth: int) -> bool:
        """Whether carried TREE, whose path held tree THEN (whole here) before, is whole."""
        if (tree, then) in self.judged:
            return True
        kind, data = self.objects.get(tree, (0, b""))
        self.budget -= max(len(data), _WHOLE_VISIT_BYTES)
        if kind != _TREE or depth > _WHOLE_DEPTH_MAX or self.budget < 0:
            return False
        found = trees.entries(data)
        before = trees.PARSED.get(self.odb, bytes.fromhex(then), most=self.budget) if then is not None else ({}, 0)
        if found is None or before is None:
            return False
        self.budget -= before[1]
        for mode, name, raw in found:
            was = before[0].get(name)
            if was == (mode, raw) or mode == _GITLINK:      # git looks for no object of a submodule's commit
                continue
            oid = raw.hex()
            if mode == _TREE_MODE:
                if not self.tree(oid, was[1].hex() if was is not None and was[0] == _TREE_MODE else None, depth + 1):
                    return False
            elif self.objects.get(oid, (0, b""))[0] != _BLOB:
                return False
        self.judged.add((tree, then))
        return True


def _records(raw: bytes) -> list[tuple[int, str, bytes]] | None:
    """A segment's records, (kind, claimed id, data) each; None when one is malformed."""
    records = []
    at = 0
    while at < len(raw):
        end = raw.find(b"\n", at)
        try:
            kind, size, claimed = raw[at:end].decode().split(" ")
            data = raw[end + 1:end + 1 + int(size)]
            number = int(kind)
        except ValueError:
            return None
        if end < 0 or len(data) != int(size) or number not in (1, 2, 3, _DELTA + 2, _DELTA + 3):
            return None
        records.append((number, claimed, data))
        at = end + 1 + int(size)
    return records


def _undelta(body: bytes, kind: int, seen: dict[str, tuple[int, bytes]], odb: pygit2.Odb,
             budget: int) -> tuple[bytes, int] | None:
    """The object a `_delta` BODY makes of its base (an object of the payload before it, or one here),
    and the bytes that took; None when the body is malformed, the base is not here, is of another kind
    than KIND, or would take more than BUDGET."""
    import pygit2

    end = body.find(b"\n")
    try:
        base_id, prefix_s, suffix_s = body[:end].decode().split(" ")
        prefix, suffix = int(prefix_s), int(suffix_s)
    except ValueError:
        return None
    if end < 0 or not is_full_id(base_id) or prefix < 0 or suffix < 0:
        return None
    got = seen.get(base_id)
    if got is None:
        try:
            # Its kind and size first: a base of any size may be named (the largest file here), and it
            # is read only when it and what it makes fit in the budget.
            header_kind, size = odb.read_header(base_id)
            if header_kind != kind or prefix + suffix > size or 2 * size + len(body) > budget:
                return None
            got = odb.read(base_id)
        except (KeyError, ValueError, pygit2.GitError):
            return None
    base_kind, base = got
    whole = base[:prefix] + body[end + 1:] + base[len(base) - suffix:]
    if base_kind != kind or prefix + suffix > len(base) or len(base) + len(whole) > budget:
        return None
    return whole, len(base) + len(whole)


def _index_pack(repo: Repo, objects: list[tuple[int, bytes]]) -> None:
    """OBJECTS (kind, data) into one new pack, which git's index-pack checks and names: one file and its
    index, where loose objects are a file each (~0.7 ms apiece here, several times that under load;
    a worker receives the objects of every merge). The pack appears whole, once indexed."""
    parts = [b"PACK", struct.pack(">II", 2, len(objects))]
    for kind, data in objects:
        size = len(data)
        head = [(kind << 4) | (size & 0x0F)]
        size >>= 4
        while size:
            head[-1] |= 0x80
            head.append(size & 0x7F)
            size >>= 7
        parts += [bytes(head), zlib.compress(data, 1)]
    pack = b"".join(parts)
    proc.git_bytes("index-pack", "--stdin", cwd=repo.root, input=pack + hashlib.sha1(pack).digest())


_KIND_NAMES = {1: b"commit", 2: b"tree", 3: b"blob"}


def _sha1(kind: int, data: bytes) -> str:
    """The id git gives an object of KIND and DATA in a SHA-1 repository."""
    return hashlib.sha1(_KIND_NAMES[kind] + b" %d\0" % len(data) + data).hexdigest()


def has_commit(repo: Repo, sha: str) -> bool:
    """Whether commit SHA is in REPO's object store (read in this process: no git process)."""
    import pygit2

    try:
        obj = repo.pygit.get(sha)
    except (ValueError, pygit2.GitError):
        return False
    return isinstance(obj, pygit2.Commit)
