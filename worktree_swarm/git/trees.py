"""Raw tree objects read as git writes them, without pygit2's tree objects (pygit2 1.21 keeps every
name a tree is looked up by: over a thousand-task run, hundreds of MB)."""

from __future__ import annotations

import re

TREE_MODE = b"40000"
# The modes git writes; a tree holding another (an old git's 100664) is one git would rewrite.
MODES = frozenset((b"100644", b"100755", b"120000", b"160000", TREE_MODE))
_ENTRY = re.compile(rb"([0-7]+) ([^\0/]+)\0(.{20})", re.S)
_DATA = re.compile(rb"(?:[0-7]+ [^\0/]+\0.{20})*", re.S)


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
