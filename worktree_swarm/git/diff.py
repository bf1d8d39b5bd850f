"""What a branch changed: the diff text and per-file line counts."""

from __future__ import annotations

from dataclasses import dataclass

from worktree_swarm.util import proc
from worktree_swarm.git.repo import Repo


@dataclass(frozen=True)
class FileChange:
    path: str
    added: int | None      # None for binary files
    removed: int | None
    old_path: str | None = None


# What a diff shows is the bytes: no external diff program, no textconv filter.
PLAIN = ("--no-color", "--no-ext-diff", "--no-textconv")


def diff_text(repo: Repo, base: str, head: str) -> str:
    """The unified diff between two commits (or trees), as their bytes say: decoded without
    newline translation (a lone CR stays inside its line), attributes of no checkout applied.

    Prefixes are forced: a user's diff.noprefix would otherwise eat real top-level `a/` folders.
    """
    raw = proc.git_bytes(*repo.objects_only(), "diff", *PLAIN, "-M", "--src-prefix=a/", "--dst-prefix=b/",
                         base, head, cwd=repo.common_dir)
    return raw.decode("utf-8", errors="surrogateescape")


def changed_files(repo: Repo, base: str, head: str) -> list[FileChange]:
    """`git diff --numstat -z -M`: one entry per changed path; renames keep their source."""
    out = repo.git(*repo.objects_only(), "diff", "--numstat", "-z", "-M", base, head, cwd=repo.common_dir).stdout
    records = out.split("\0")
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
