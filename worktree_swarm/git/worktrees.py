"""Where task attempts get a checkout. One small interface, so slots can replace fresh worktrees."""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.util.errors import CommandError
from worktree_swarm.git.repo import Repo
from worktree_swarm.util.types import BranchName, Sha


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

    def holds(self, path: Path) -> tuple[int, ...]:
        """File descriptors whose locks say PATH is in use. An agent inherits them, so a checkout
        whose orphaned agent outlived a crashed orchestrator is never handed to another run."""
        return ()

    def setup_needed(self, path: Path) -> bool:
        """Whether the worktree setup step must run in PATH before its agent (a fresh checkout: always)."""
        return True

    def setup_done(self, path: Path) -> None:
        """The setup step succeeded in PATH."""

    def close(self) -> None:
        """The run is over: stop making checkouts and let go of the ones this pool holds."""


class FreshWorktrees(WorktreePool):
    """A new `git worktree add` per attempt, each folder with its own basename under ROOT."""

    def __init__(self, repo: Repo, root: Path) -> None:
        self.repo = repo
        self.root = root

    def acquire(self, *, name: str, branch: BranchName, start: Sha) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        add_worktree(self.repo, path, start, branch=branch)
        return path

    def release(self, path: Path, *, keep: bool) -> None:
        if not keep:
            remove_worktree(self.repo, path)


# Every worktree administration goes through these three, under repo.worktree_admin: concurrent
# adds read each other's half-written .git/worktrees/*/commondir (seen with 64 at once), and an add
# fails when a remove deletes the emptied .git/worktrees folder under it.

def add_worktree(repo: Repo, path: Path, start: Sha, *, branch: BranchName | None = None) -> None:
    """A checkout of START at PATH, on the new BRANCH or detached."""
    where = ["-b", branch] if branch is not None else ["--detach"]
    with repo.worktree_admin:
        repo.git("worktree", "add", "--quiet", *where, path, start)


def remove_worktree(repo: Repo, path: Path) -> None:
    """Remove a worktree and its administrative entry, even when its folder is already gone."""
    with repo.worktree_admin:
        try:
            repo.git("worktree", "remove", "--force", "--force", path)
        except CommandError:
            # The folder may have been deleted by an agent; then only the entry is left to prune.
            shutil.rmtree(path, ignore_errors=True)
            repo.git("worktree", "prune")


def prune_worktrees(repo: Repo) -> None:
    with repo.worktree_admin:
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
