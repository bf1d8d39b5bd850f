"""The tree `git merge-tree` writes for a merge where no path needs merging, made in this process.

With one merge base, a path that only one side changed (added, modified, removed) since the base
takes that side's entry, whatever rename detection finds: a rename pairs a removal with an addition
of the same side, and matters to the merge only where the other side changed the path renamed from,
or added into a folder the first one removed whole (a folder rename) — paths both sides changed. So
the merge is computed here only where, folder by folder, no entry was changed by both sides (folders
changed by both are compared entry by entry); anything else is left to git.
"""

from __future__ import annotations

from collections.abc import Container
from typing import TYPE_CHECKING

from worktree_swarm.git import trees
from worktree_swarm.git.repo import Repo
from worktree_swarm.util.types import Sha

if TYPE_CHECKING:
    import pygit2

_TREE = 2
_TREE_MODE = trees.TREE_MODE
_CHAIN_MAX = 64      # commits of THEIRS above the merge base that are looked at
_DEPTH_MAX = 100     # folders deep: a task's deeper folder changed on both sides is git's to merge
# A folder both sides changed costs ~0.8 ms per 1,000 entries here, and git's merge ~4 ms whatever its
# size: past ~3,000 entries (~130 KB) git is the faster.
_TREE_BYTES_MAX = 128 * 1024


class _Needed(Exception):
    """A path needs git's merge (both sides changed it, or a tree is not as git writes trees)."""


def one_sided(repo: Repo, ours: Sha, theirs: Sha, *, base: Sha | None = None) -> Sha | None:
    """The tree git's merge of OURS and THEIRS writes, when no path needs merging and the merge base is
    one (THEIRS a line of single-parent commits above it; the train's task branches are); else None.
    BASE: the one merge base, when the caller knows it (`line_down` from THEIRS to what OURS reaches)."""
    import pygit2

    pg = repo.pygit
    try:
        if base is None:
            found = pg.merge_base(pygit2.Oid(hex=ours), pygit2.Oid(hex=theirs))
            # A line of commits from THEIRS down to the base: the common ancestors of the two are then
            # the base's (a commit of the line that OURS had would be a later base), so the base is one,
            # as git's merge finds it.
            if found is None or str(found) == theirs or line_down(repo, theirs, {str(found)}) is None:
                return None
            base = Sha(str(found))
        was, mine, their = (pg[pygit2.Oid(hex=commit)].peel(pygit2.Commit).tree_id.raw
                            for commit in (base, ours, theirs))
        tree = _merge(pg.odb, was, mine, their)
    except (_Needed, KeyError, ValueError, pygit2.GitError):
        return None
    return Sha(tree.hex())


def line_down(repo: Repo, theirs: Sha, stop: Container[str]) -> tuple[Sha, list[Sha]] | None:
    """The first commit in STOP that THEIRS's line of single-parent commits reaches (THEIRS itself
    included), and the commits of the line above it; None past a merge, a root or _CHAIN_MAX commits.
    Where STOP is a commit B that OURS reaches and every commit OURS reaches that B does not, the commit
    found is the one merge base of OURS and THEIRS (a line's commits above it are not OURS's)."""
    import pygit2

    line: list[Sha] = []
    at = Sha(theirs)
    for _ in range(_CHAIN_MAX + 1):
        if at in stop:
            return at, line
        parents = repo.pygit[pygit2.Oid(hex=at)].peel(pygit2.Commit).parent_ids
        if len(parents) != 1:
            return None
        line.append(at)
        at = Sha(str(parents[0]))
    return None


def _merge(odb: pygit2.Odb, base: bytes, ours: bytes, theirs: bytes, depth: int = 0) -> bytes:
    """The id of the merged tree of trees BASE, OURS and THEIRS (raw ids), written; or raise _Needed."""
    # A folder one side alone changed is that side's tree, as git keeps it; git writes the root afresh
    # from the entries it read (a root git would not write so is rewritten, or refused).
    if depth > 0 and ours == base:
        return theirs
    if depth > 0 and theirs == base:
        return ours
    if (ours == theirs != base) or depth > _DEPTH_MAX:     # alike on both sides: a file both removed may be
        raise _Needed(b"")                                  # renamed two ways
    b, o, t = (_entries(odb, tree) for tree in (base, ours, theirs))
    # Theirs' changes onto ours (a task's few onto a head's many): the entries compared in C.
    out = dict(o)
    for name in {name for name, entry in t.items() if b.get(name) != entry} | (b.keys() - t.keys()):
        was, mine, their = b.get(name), o.get(name), t.get(name)
        if mine == was:
            got = their
        elif was is not None and mine is not None and their is not None and was[0] == mine[0] == their[0] == _TREE_MODE:
            got = (_TREE_MODE, _merge(odb, was[1], mine[1], their[1], depth + 1))
        else:
            raise _Needed(name)
        if got is None:
            del out[name]
        else:
            out[name] = got
    if not out:         # a folder emptied by the two sides together: git drops it (and may say more)
        raise _Needed(b"")
    # git's order: a folder's name sorts as if it ended in "/"
    data = b"".join(mode + b" " + name + b"\0" + oid
                    for name, (mode, oid) in sorted(out.items(), key=lambda i: i[0] + b"/" if i[1][0] == _TREE_MODE
                                                    else i[0]))
    tree = odb.write(_TREE, data).raw
    trees.PARSED.put(tree, out, len(data))          # the next merge's head, mostly
    return tree


def _entries(odb: pygit2.Odb, tree: bytes) -> dict[bytes, trees.Entry]:
    """A tree's entries by name; _Needed for one git would not write as it is (mode, name, order), or
    one git merges faster."""
    found = trees.PARSED.get(odb, tree, most=_TREE_BYTES_MAX)
    if found is None:
        raise _Needed(b"")
    return found[0]
