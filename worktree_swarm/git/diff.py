"""What a branch changed: the diff text and per-file line counts."""

from __future__ import annotations

from dataclasses import dataclass

from worktree_swarm import proc
from worktree_swarm.git.repo import Repo
from worktree_swarm.types import Sha


@dataclass(frozen=True)
class FileChange:
    path: str
    added: int | None      # None for binary files
    removed: int | None
    old_path: str | None = None


def diff_text(repo: Repo, base: Sha, head: Sha) -> str:
    """The unified diff, decoded without newline translation (a lone CR stays inside its line).

    Prefixes are forced: a user's diff.noprefix would otherwise eat real top-level `a/` folders.
    """
    raw = proc.git_bytes("diff", "--no-color", "--no-ext-diff", "-M", "--src-prefix=a/", "--dst-prefix=b/",
                         base, head, cwd=repo.root)
    return raw.decode("utf-8", errors="surrogateescape")


def changed_files(repo: Repo, base: Sha, head: Sha) -> list[FileChange]:
    """`git diff --numstat -z -M`: one entry per changed path; renames keep their source."""
    out = repo.git("diff", "--numstat", "-z", "-M", base, head).stdout
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
