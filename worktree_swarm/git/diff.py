"""What a branch changed: the diff text and per-file line counts."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from worktree_swarm.util import proc
from worktree_swarm.git.repo import Repo

from worktree_swarm.util.types import is_full_id

@dataclass(frozen=True)
class FileChange:
    path: str
    added: int | None      # None for binary files
    removed: int | None
    old_path: str | None = None


# What a diff shows is the bytes: no external diff program, no textconv filter.
PLAIN = ("--no-color", "--no-ext-diff", "--no-textconv")
# Prefixes are forced: a user's diff.noprefix would otherwise eat real top-level `a/` folders.
_PATCH = (*PLAIN, "-M", "--src-prefix=a/", "--dst-prefix=b/")

# The patch `changed_files` got in the same git process as the counts, kept for the `diff_text` of
# the same two commits that nearly always follows (an attempt lists its files, then the gate reads
# its diff): one process instead of two per attempt. Taken once; the oldest go first.
_patches: OrderedDict[tuple[str, str, str], str] = OrderedDict()
_patches_lock = threading.Lock()
_KEEP = 8
# Only commit ids name the same diff at both calls; a ref may move in between.


def diff_text(repo: Repo, base: str, head: str, paths: Sequence[str] = ()) -> str:
    """The unified diff between two commits (or trees), as their bytes say: decoded without
    newline translation (a lone CR stays inside its line), attributes of no checkout applied.

    Prefixes are forced: a user's diff.noprefix would otherwise eat real top-level `a/` folders.
    """
    if not paths and is_full_id(base) and is_full_id(head):
        with _patches_lock:
            kept = _patches.pop((str(repo.common_dir), base, head), None)
        if kept is not None:
            return kept
    raw = proc.git_bytes(*repo.objects_only(), "diff", *_PATCH, base, head, *(("--", *paths) if paths else ()),
                         cwd=repo.common_dir)
    return raw.decode("utf-8", errors="surrogateescape")


def changed_paths(repo: Repo, base: str, head: str) -> set[str]:
    """Every path that differs between two commits, a rename as both its paths: what may meet another
    change. Names only: no patch is made (nor cached in place of an attempt's)."""
    out = proc.git_bytes(*repo.objects_only(), "diff", "--name-only", "-z", "--no-renames", base, head,
                         cwd=repo.common_dir)
    return {path for path in out.decode("utf-8", errors="surrogateescape").split("\0") if path}


def changed_files(repo: Repo, base: str, head: str) -> list[FileChange]:
    """`git diff --numstat -z -M`: one entry per changed path; renames keep their source."""
    # One process for the counts and the patch (`diff_text` takes it): numstat's records, each ended
    # by NUL, then one more NUL, then the patch. No record is empty, so the first NUL NUL ends them.
    raw = proc.git_bytes(*repo.objects_only(), "diff", *_PATCH, "--numstat", "-z", "-p", base, head,
                         cwd=repo.common_dir)
    stat, _, patch = raw.partition(b"\0\0")
    if is_full_id(base) and is_full_id(head):
        with _patches_lock:
            _patches[(str(repo.common_dir), base, head)] = patch.decode("utf-8", errors="surrogateescape")
            while len(_patches) > _KEEP:
                _patches.popitem(last=False)
    records = stat.decode("utf-8", errors="replace").split("\0")
    changes: list[FileChange] = []
    i = 0
    while i < len(records) and records[i]:
        added, removed, path = records[i].split("\t", 2)
        old: str | None = None
        if path == "":  # a rename: the next two records are its source and target
            old, path = records[i + 1], records[i + 2]
            i += 2
        changes.append(FileChange(path, None if added == "-" else int(added),
                                  None if removed == "-" else int(removed), old))
        i += 1
    return changes
