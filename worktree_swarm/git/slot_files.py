"""The files of slots, outside any git worktree command: lock, record, the worktree's own git dir.

`<git common dir>/wswarm/slots/` holds, per slot, its worktree folder `slot-<hex>/`, a lock file
`slot-<hex>.lock` that one process at a time holds (an flock: a dead holder frees it) and a JSON
record `slot-<hex>.json` (kept aside for inspection? busy? when did the setup step last run?).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worktree_swarm.util import proc
from worktree_swarm.util.errors import WswarmError
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.worktrees import list_worktrees, remove_worktree
from worktree_swarm.util.types import Sha
from worktree_swarm.store import layout

# What an operation an agent started and did not finish (or a git killed mid-command) leaves in a
# worktree's own git dir. A fresh worktree has none of them; `logs` would let `@{-1}` name the
# previous task's branch, `refs` holds per-worktree refs such as bisect's.
TRANSIENT_FILES = ("index.lock", "HEAD.lock", "MERGE_HEAD", "MERGE_MSG", "MERGE_MODE", "MERGE_RR", "AUTO_MERGE",
                   "ORIG_HEAD", "FETCH_HEAD", "CHERRY_PICK_HEAD", "REVERT_HEAD", "REBASE_HEAD", "SQUASH_MSG",
                   "COMMIT_EDITMSG", "BISECT_LOG", "BISECT_START", "BISECT_TERMS", "BISECT_NAMES",
                   "BISECT_EXPECTED_REV", "BISECT_ANCESTORS_OK", "BISECT_RUN", "BISECT_FIRST_PARENT",
                   "config.worktree")
TRANSIENT_DIRS = ("rebase-merge", "rebase-apply", "sequencer", "logs", "refs", "info")


def slots_dir(repo: Repo) -> Path:
    """Where every slot of the repository lives, next to the runs' state."""
    return layout.slots_dir(repo.state_dir)


# -- outside a run: resume and clean ---------------------------------------------------------------

def keep_aside(repo: Repo, paths: set[str]) -> None:
    """Mark slots as kept for inspection (failed tasks' worktrees found after a crash)."""
    root = slots_dir(repo)
    for text in paths:
        path = Path(text)
        if path.parent == root and path.is_dir():
            write_meta(root, path.name, dict(read_meta(root, path.name), kept=True))


def forget_slot(repo: Repo, path: Path) -> None:
    """Drop the record and lock file of a slot whose worktree was just removed."""
    root = slots_dir(repo)
    if path.parent == root:
        (root / f"{path.name}.json").unlink(missing_ok=True)
        (root / f"{path.name}.lock").unlink(missing_ok=True)


def count_slots(repo: Repo) -> int:
    """The slots (worktree folders) the repository has, in use or not."""
    root = slots_dir(repo)
    return sum(1 for p in root.glob("slot-*") if p.is_dir()) if root.is_dir() else 0


def remove_slots(repo: Repo) -> tuple[int, int]:
    """Remove every slot no running process holds: (removed, in use and left alone)."""
    root = slots_dir(repo)
    if not root.is_dir():
        return 0, 0
    registered = {real(info.path) for info in list_worktrees(repo)}
    removed = busy = 0
    names = {p.stem for p in root.glob("slot-*.lock")} | {p.name for p in root.glob("slot-*") if p.is_dir()}
    for name in sorted(names):
        lock = root / f"{name}.lock"
        fd = try_lock(lock) if lock.exists() else None
        if lock.exists() and fd is None:
            busy += 1
            continue
        path = root / name
        removed += path.is_dir()
        try:
            if real(path) in registered:
                remove_worktree(repo, path)
            else:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            forget_slot(repo, path)
            if fd is not None:
                os.close(fd)
    return removed, busy


# -- files -----------------------------------------------------------------------------------------

def real(path: Path) -> str:
    return os.path.realpath(path)


def try_lock(path: Path) -> int | None:
    """An fd holding PATH's exclusive flock, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def admin_dir(repo: Repo, path: Path) -> Path:
    """The worktree's own git dir, from its `.git` file; only one of REPO's worktrees that points
    back at PATH. An agent can rewrite `.git`, and what it names gets scrubbed and its HEAD rewritten:
    never the user's own git dir or another slot's."""
    text = (path / ".git").read_text(encoding="utf-8").strip()
    admin = Path(text.removeprefix("gitdir: "))
    admin = admin if admin.is_absolute() else path / admin
    if (not text.startswith("gitdir: ") or real(admin.parent) != real(repo.common_dir / "worktrees")
            or real(Path((admin / "gitdir").read_text(encoding="utf-8").strip())) != real(path / ".git")):
        raise WswarmError(f"{path}/.git does not point at this worktree's own git dir")
    return admin


# A worktree's git dir's `commondir` file, as `git worktree add` writes it.
COMMONDIR = b"../..\n"


def undo_steering(admin: Path) -> list[str]:
    """Undo what steers git commands run in the worktree of git dir ADMIN to other config or another
    repository, which no task has business writing: a per-worktree config (read when the repository
    has extensions.worktreeConfig: a filter there runs in wswarm's own `git add`) and a `commondir`
    not as `worktree add` wrote it. Returns the names of what was undone."""
    undone = []
    if os.path.lexists(admin / "config.worktree"):
        (admin / "config.worktree").unlink()
        undone.append("config.worktree")
    if put_commondir(admin):
        undone.append("commondir")
    return undone


def put_commondir(admin: Path) -> bool:
    """The `commondir` of git dir ADMIN as `worktree add` wrote it; True when it was not. Replaced in one
    rename, never followed: every `git worktree add` reads every worktree's `commondir`, and one caught
    between an unlink and a write (an empty file) fails ("failed to read .../commondir")."""
    try:
        if proc.read_bytes(admin / "commondir") == COMMONDIR:
            return False
    except OSError:
        pass
    tmp = admin / "commondir.wswarm-tmp"
    proc.write_new(tmp, COMMONDIR)
    os.replace(tmp, admin / "commondir")
    return True


@dataclass(frozen=True)
class SavedIndex:
    """A worktree's index file as wswarm left it: its bytes and times (git tells racily clean
    entries by the file's mtime, so a copy put back must keep it)."""

    data: bytes
    times_ns: tuple[int, int]


def save_index(admin: Path) -> SavedIndex | None:
    try:
        fd = proc.open_regular(admin / "index", os.O_RDONLY)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        return SavedIndex(f.read(), (st.st_atime_ns, st.st_mtime_ns))


def restore_index(admin: Path, saved: SavedIndex) -> None:
    """Put SAVED back as the index of git dir ADMIN, whatever stands there now (never followed)."""
    proc.write_new(admin / "index", saved.data)
    os.utime(admin / "index", ns=saved.times_ns, follow_symlinks=False)


def write_head(admin: Path, sha: Sha) -> None:
    tmp = admin / "HEAD.wswarm-tmp"
    tmp.write_text(sha + "\n", encoding="utf-8")
    os.replace(tmp, admin / "HEAD")


def read_meta(root: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((root / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_meta(root: Path, name: str, data: dict[str, Any]) -> None:
    tmp = root / f"{name}.json.tmp"
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, root / f"{name}.json")
