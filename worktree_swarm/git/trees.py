"""Raw tree objects read as git writes them, without pygit2's tree objects (pygit2 1.21 keeps every
name a tree is looked up by: over a thousand-task run, hundreds of MB)."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pygit2

TREE_MODE = b"40000"
# The modes git writes; a tree holding another (an old git's 100664) is one git would rewrite.
MODES = frozenset((b"100644", b"100755", b"120000", b"160000", TREE_MODE))
_ENTRY = re.compile(rb"([0-7]+) ([^\0/]+)\0(.{20})", re.S)
_DATA = re.compile(rb"(?:[0-7]+ [^\0/]+\0.{20})*", re.S)
_TREE = 2           # libgit2's number for a tree
Entry = tuple[bytes, bytes]          # (mode, raw id)


def entries(data: bytes) -> list[tuple[bytes, bytes, bytes]] | None:
    """(mode, name, raw id) of each entry of a tree's raw DATA (SHA-1 ids); None for a tree git would
    not write so: a mode of another form, an empty, `.` or `..` name, an id cut short, entries out of
    git's order (a folder's name sorts as if it ended in "/") or twice."""
    if _DATA.fullmatch(data) is None:
        return None
    found: list[tuple[bytes, bytes, bytes]] = _ENTRY.findall(data)
    names = {name for _, name, _ in found}
    keys = [name + b"/" if mode == TREE_MODE else name for mode, name, _ in found]
    if (len(names) != len(found) or keys != sorted(keys) or not {mode for mode, _, _ in found} <= MODES
            or b"." in names or b".." in names):
        return None
    return found


class Parsed:
    """The entries of the trees read or written lately, by id: the merge train's next merge reads the
    trees the last one read or wrote, and the request after it sends them (at 1,000 entries a tree
    takes ~0.8 ms to read and parse). An id names its content, so one cache serves every repository
    and thread of the process. It holds ENTRIES_MAX entries in all (~130 bytes each) and no tree
    larger than a quarter of that."""

    def __init__(self, entries_max: int) -> None:
        self._max = entries_max
        self._held = 0
        self._lock = threading.Lock()
        self._trees: OrderedDict[bytes, tuple[dict[bytes, Entry], int]] = OrderedDict()

    def get(self, odb: pygit2.Odb, tree: bytes, *, data: bytes | None = None,
            most: int | None = None) -> tuple[dict[bytes, Entry], int] | None:
        """Tree TREE's entries by name (not to be changed) and its size in bytes, DATA when it is at
        hand; None for an object that is not a tree as git writes them, or one larger than MOST bytes
        (not read further). KeyError when it is not here."""
        import pygit2

        with self._lock:
            found = self._trees.get(tree)
            if found is not None:
                self._trees.move_to_end(tree)
        if found is None:
            if data is None:
                kind, data = odb.read(pygit2.Oid(raw=tree))
                if kind != _TREE:
                    return None
            if most is not None and len(data) > most:
                return None
            listed = entries(data)
            if listed is None:
                return None
            found = ({name: (mode, oid) for mode, name, oid in listed}, len(data))
            self.put(tree, *found)
        return None if most is not None and found[1] > most else found

    def put(self, tree: bytes, entries: dict[bytes, Entry], size: int) -> None:
        if 4 * len(entries) > self._max:
            return
        with self._lock:
            if tree not in self._trees:
                self._trees[tree] = (entries, size)
                self._held += len(entries)
            while self._held > self._max:
                self._held -= len(self._trees.popitem(last=False)[1][0])


PARSED = Parsed(20_000)       # ~3 MB at most
