"""Watch the git state agents share with the user: the user's checkout, their branches, the stash.

A command agent runs with the user's permissions, so nothing stops it from switching the user's
checkout, writing into it by absolute path, creating branches or popping the shared stash
(FACTS.md: refs/stash is shared by every worktree). wswarm cannot prevent that; it notices it,
restores the one thing it can restore without guessing (stash entries, which are commits), and
says who ran while it happened.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

from worktree_swarm.git.repo import Repo

# Branches of wswarm's own runs are not the user's.
_OURS = "refs/heads/wswarm/"


@dataclass(frozen=True)
class Snapshot:
    """What the user's side of the repository looks like at one moment."""

    head: str                                   # the checkout's HEAD: a ref name, or a commit id
    branches: dict[str, str]                    # refs/heads/* but wswarm/*: name -> commit
    stash: tuple[tuple[str, str], ...]          # (commit, message), newest first
    checkout: frozenset[tuple[str, int, int]]   # changed/untracked files: (path, size, mtime_ns)


@dataclass(frozen=True)
class Change:
    kind: str          # head | branch | stash-lost | stash-added | checkout
    detail: str


@dataclass
class Findings:
    changes: list[Change] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)   # stash entries put back

    def describe(self) -> str:
        text = "; ".join(c.detail for c in self.changes)
        if self.restored:
            text += f" (restored {len(self.restored)} stash entr{'y' if len(self.restored) == 1 else 'ies'})"
        return text

    @property
    def git_state(self) -> bool:
        """Changes only a git command makes: a switched checkout, a popped or dropped stash."""
        return any(c.kind in ("head", "stash-lost") for c in self.changes)


def snapshot(repo: Repo, *, checkout: frozenset[tuple[str, int, int]] | None = None) -> Snapshot:
    """Refs read through libgit2 (microseconds); the changed files are git status's (one process)."""
    pygit = repo.pygit
    head_ref = pygit.lookup_reference("HEAD")
    head = str(head_ref.target)      # a ref name when on a branch, else the commit id
    # Looked up with get(): a ref listed a moment ago may be deleted meanwhile (by the user, by an agent).
    refs = {name: pygit.references.get(name)
            for name in pygit.references if name.startswith("refs/heads/") and not name.startswith(_OURS)}
    branches = {name: str(ref.target) for name, ref in refs.items() if ref is not None}
    stash_ref = pygit.references.get("refs/stash")
    stash: tuple[tuple[str, str], ...] = ()
    if stash_ref is not None:
        stash = tuple((str(entry.oid_new), entry.message) for entry in stash_ref.log())
    return Snapshot(head=head, branches=branches, stash=stash,
                    checkout=_checkout_files(repo) if checkout is None else checkout)


def _checkout_files(repo: Repo) -> frozenset[tuple[str, int, int]]:
    # --no-optional-locks: no index refresh written back, so no index.lock in the user's checkout
    # for a `git commit` of theirs to trip over.
    out = repo.git("--no-optional-locks", "status", "--porcelain=v1", "-z", "--untracked-files=all",
                   "--ignore-submodules", check=False).stdout
    files = set()
    for record in out.split("\0"):
        if len(record) > 3 and record[2] == " ":
            path = record[3:]
            try:
                st = os.lstat(repo.root / path)
                files.add((path, st.st_size, st.st_mtime_ns))
            except OSError:
                files.add((path, -1, 0))
    return frozenset(files)


def compare(before: Snapshot, after: Snapshot) -> list[Change]:
    changes: list[Change] = []
    if after.head != before.head:
        changes.append(Change("head", f"the checkout's HEAD moved from {_short(before.head)} to {_short(after.head)}"))
    for name, sha in sorted(after.branches.items()):
        old = before.branches.get(name)
        if old is None:
            changes.append(Change("branch", f"branch {name.removeprefix('refs/heads/')} was created"))
        elif old != sha:
            # The user commits to their own branches too: reported, never blamed on an agent.
            changes.append(Change("branch", f"branch {name.removeprefix('refs/heads/')} moved from "
                                            f"{old[:12]} to {sha[:12]}"))
    for name in sorted(set(before.branches) - set(after.branches)):
        changes.append(Change("branch", f"branch {name.removeprefix('refs/heads/')} was deleted"))
    lost = [entry for entry in before.stash if entry not in after.stash]
    added = [entry for entry in after.stash if entry not in before.stash]
    for _, message in lost:
        changes.append(Change("stash-lost", f"the stash entry {message!r} was popped or dropped"))
    if added:
        changes.append(Change("stash-added", f"{len(added)} stash entr{'y was' if len(added) == 1 else 'ies were'} added"))
    touched = sorted({path for path, *_ in before.checkout ^ after.checkout})
    if touched:
        shown = ", ".join(touched[:5]) + (f" and {len(touched) - 5} more" if len(touched) > 5 else "")
        changes.append(Change("checkout", f"files in the checkout changed: {shown}"))
    return changes


def restore_stash(repo: Repo, before: Snapshot, after: Snapshot) -> list[str]:
    """Put back the stash entries that disappeared, oldest first so their order is kept.
    A stash entry is a commit that still exists, so this loses nothing and guesses nothing."""
    restored = []
    for sha, message in reversed(before.stash):
        if (sha, message) not in after.stash:
            repo.git("stash", "store", "-q", "-m", message, sha)
            restored.append(sha)
    return restored


def _short(ref: str) -> str:
    return ref.removeprefix("refs/heads/") if ref.startswith("refs/") else ref[:12]


class Guard:
    """Watches the shared state across attempts; thread-safe, one per run."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._last = snapshot(repo)

    def check(self, *, scan_files: bool = True) -> Findings:
        """What changed since the last check; lost stash entries are restored at once. Without
        SCAN_FILES the checkout's files are not looked at (refs are µs; `git status` walks the tree)."""
        with self._lock:
            keep = None if scan_files else self._last.checkout
            now = snapshot(self.repo, checkout=keep)
            findings = Findings(compare(self._last, now))
            if any(c.kind == "stash-lost" for c in findings.changes):
                findings.restored = restore_stash(self.repo, self._last, now)
                now = snapshot(self.repo, checkout=now.checkout)
            self._last = now
            return findings
