"""Where task attempts get a checkout. One small interface, so slots can replace fresh worktrees."""

from __future__ import annotations

import shutil
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.errors import CommandError
from worktree_swarm.git.repo import Repo
from worktree_swarm.types import BranchName, Sha


@dataclass(frozen=True)
class WorktreeInfo:
    path: Path
    head: Sha | None
    branch: BranchName | None
    locked: bool
    prunable: bool


class WorktreePool(ABC):
    """Hands out a checkout of a new branch at a given commit, and takes it back."""

    @abstractmethod
    def acquire(self, *, name: str, branch: BranchName, start: Sha) -> Path:
        """A checkout at START on the new branch BRANCH; NAME is unique for this attempt."""

    @abstractmethod
    def release(self, path: Path, *, keep: bool) -> None:
        """Give a checkout back; keep=True leaves it on disk for inspection."""


class FreshWorktrees(WorktreePool):
    """A new `git worktree add` per attempt, each folder with its own basename under ROOT."""

    def __init__(self, repo: Repo, root: Path) -> None:
        self.repo = repo
        self.root = root
        # Concurrent `git worktree add`s race: one reads another's half-written
        # .git/worktrees/*/commondir and fails (seen with 64 at once). Adds and removes take turns.
        self._admin = threading.Lock()

    def acquire(self, *, name: str, branch: BranchName, start: Sha) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        with self._admin:
            self.repo.git("worktree", "add", "--quiet", "-b", branch, path, start)
        return path

    def release(self, path: Path, *, keep: bool) -> None:
        if not keep:
            with self._admin:
                remove_worktree(self.repo, path)


def remove_worktree(repo: Repo, path: Path) -> None:
    """Remove a worktree and its administrative entry, even when its folder is already gone."""
    try:
        repo.git("worktree", "remove", "--force", "--force", path)
    except CommandError:
        # The folder may have been deleted by an agent; then only the entry is left to prune.
        shutil.rmtree(path, ignore_errors=True)
        repo.git("worktree", "prune")


def list_worktrees(repo: Repo) -> list[WorktreeInfo]:
    """Parse `git worktree list --porcelain -z`."""
    out = repo.git("worktree", "list", "--porcelain", "-z").stdout
    infos: list[WorktreeInfo] = []
    fields: dict[str, str] = {}
    for record in out.split("\0"):
        if record:
            key, _, value = record.partition(" ")
            fields[key] = value
            continue
        if "worktree" in fields:
            branch = fields.get("branch", "")
            infos.append(WorktreeInfo(
                path=Path(fields["worktree"]),
                head=Sha(fields["HEAD"]) if "HEAD" in fields else None,
                branch=BranchName(branch.removeprefix("refs/heads/")) if branch else None,
                locked="locked" in fields,
                prunable="prunable" in fields,
            ))
        fields = {}
    return infos
