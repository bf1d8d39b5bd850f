"""Conflicts forecast while agents work.

Each running attempt's worktree is snapshotted — a commit of what it holds right now, written through
a temporary copy of its index, so the agent's own index and files are never touched — and merged in
memory against the integration head and against every other running attempt's snapshot. Only pairs
whose changed files meet are merged: two attempts that changed different files cannot conflict.
"""

from __future__ import annotations

import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm.git import residue
from worktree_swarm.git.diff import changed_paths
from worktree_swarm.git.merge_tree import merge_tree
from worktree_swarm.git.repo import Repo
from worktree_swarm.util import proc
from worktree_swarm.git.slot_files import admin_dir
from worktree_swarm.util.errors import CommandError, WswarmError
from worktree_swarm.util.types import Sha

Key = tuple[str, int]
HEAD = ""        # the "other side" of a forecast against the integration head

# Snapshots and merges may use at most this share of one core, averaged over a round and the pause after it.
CPU_SHARE = 0.05
MIN_INTERVAL = 2.0
MAX_INTERVAL = 60.0
# What one snapshot may cost: the agent owns the files git reads (a sparse terabyte takes git hours to
# hash), so each git call is killed past this, and an index bigger than this is not copied.
SNAPSHOT_TIMEOUT = 30.0
MAX_INDEX_BYTES = 256 << 20
GITLINK = 0o160000      # an index entry's mode for a submodule


@dataclass(frozen=True)
class Forecast:
    """Attempt KEY's work would conflict with OTHER (a running task, or HEAD: work already merged)."""

    key: Key
    other: str
    paths: tuple[str, ...]
    messages: tuple[str, ...] = ()


@dataclass
class Round:
    touched: dict[Key, list[str]] = field(default_factory=dict)   # files each attempt has changed so far
    forecasts: list[Forecast] = field(default_factory=list)
    head: Sha = Sha("")


def snapshot(repo: Repo, worktree: Path, *, message: str = "wswarm: snapshot",
             cancel: threading.Event | None = None, timeout: float = SNAPSHOT_TIMEOUT) -> Sha | None:
    """A commit of WORKTREE's files as they are now, its parent the worktree's HEAD; None when there is
    nothing safe to snapshot: the worktree is gone, its `.git` no longer points at its own git dir, or
    it holds a repository of its own (whose configuration git would read); None too when a git call
    passes TIMEOUT seconds or CANCEL is set (both kill it: the files are the agent's to make costly)."""
    if not (worktree / ".git").is_file() or (worktree / ".git").is_symlink():
        return None         # a FIFO or a link there would block or redirect the read of it
    try:
        admin = admin_dir(repo, worktree)
    except (WswarmError, OSError, ValueError):
        return None
    if residue.scan(worktree, common_dir=repo.common_dir).nested:
        return None
    # The worktree's own git dir and files named outright: its `.git` file is the agent's to rewrite.
    where = ("--git-dir", str(admin), "--work-tree", str(worktree))
    with tempfile.TemporaryDirectory(prefix="wswarm-snap-") as tmp:
        index = Path(tmp) / "index"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            head = proc.git(*where, "rev-parse", "--verify", "-q", "HEAD", cwd=worktree).stdout.strip()
            # its stat data makes `add` read only the changed files
            if not _copy_index(admin / "index", index):
                proc.git(*where, "read-tree", head, cwd=worktree, env=env)
            # Not into a submodule: for a gitlink whose folder holds a repository, `add` runs `git status`
            # there, with that repository's config (a filter of the agent's, run as the user). The walk
            # above cannot vouch for the folder: the agent may swap its `.git` in after it.
            outside = [f":(exclude,literal){path}" for path in _gitlinks(index)]
            # The one call that reads the agent's files: killed past TIMEOUT, or when the forecaster stops.
            added = proc.run_in_group(["git", *proc.HARDENED, *where, "add", "-A", "--", ".", *outside], cwd=worktree,
                                      env=proc.clean_env({**proc.NO_GRAFTS, **env}), output=Path(tmp) / "add.log",
                                      timeout=timeout, cancel=cancel)
            if added.returncode != 0:
                return None
            tree = proc.git(*where, "write-tree", cwd=worktree, env=env).stdout.strip()
            commit = proc.git(*where, "commit-tree", tree, "-p", head, "-m", message, cwd=worktree).stdout.strip()
        except (CommandError, OSError):
            return None         # the agent is mid-change (a lock, a half-written file): next round
    return Sha(commit)


def _gitlinks(index: Path) -> list[str]:
    """The paths of the submodules (gitlinks) the index file INDEX holds, read in-process."""
    import pygit2

    # An entry's mode is 4 bytes, big-endian: a gitlink's (0o160000) never absent from an index that
    # has one. Nearly every index has none, and listing 5,000 entries in Python holds the GIL ~2 ms.
    if GITLINK.to_bytes(4, "big") not in index.read_bytes():
        return []
    return [entry.path for entry in pygit2.Index(str(index)) if entry.mode == GITLINK]


def _copy_index(own: Path, copy: Path) -> bool:
    """Copy the agent's index to COPY; False when it is missing, not a regular file (a link, a FIFO:
    checked on the open file, so no swap in between counts) or too big to be one."""
    try:
        fd = proc.open_regular(own, os.O_RDONLY)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as src:
        if os.fstat(src.fileno()).st_size > MAX_INDEX_BYTES:
            return False
        data = src.read(MAX_INDEX_BYTES + 1)
    if len(data) > MAX_INDEX_BYTES:
        raise OSError(errno.EFBIG, "the index grew while it was read", str(own))
    copy.write_bytes(data)
    return True


def forecast(repo: Repo, head: Sha, snaps: Mapping[Key, tuple[Sha, Sha]]) -> Round:
    """Merge every snapshot (KEY -> (start, snapshot)) with HEAD and with each other, in memory."""
    out = Round(head=head)
    touched = {key: changed_paths(repo, start, snap) for key, (start, snap) in snaps.items()}
    out.touched = {key: sorted(paths) for key, paths in touched.items()}
    moved: dict[Sha, set[str]] = {}
    for key, (start, snap) in snaps.items():
        if start not in moved:
            moved[start] = changed_paths(repo, start, head) if start != head else set()
        if moved[start] & touched[key]:
            merged = merge_tree(repo, head, snap)
            if not merged.clean:
                out.forecasts.append(Forecast(key, HEAD, tuple(merged.conflicts), tuple(merged.messages)))
    keys = sorted(snaps)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if touched[a] & touched[b]:
                merged = merge_tree(repo, snaps[a][1], snaps[b][1])
                if not merged.clean:
                    out.forecasts.append(Forecast(a, b[0], tuple(merged.conflicts), tuple(merged.messages)))
                    out.forecasts.append(Forecast(b, a[0], tuple(merged.conflicts), tuple(merged.messages)))
    return out


class Forecaster:
    """Rounds of snapshots and merges on a thread of their own; the loop takes each round's result.

    The pause between rounds adapts so that the work stays under CPU_SHARE of one core."""

    def __init__(self, repo: Repo, *, running: Callable[[], dict[Key, tuple[Path, Sha]]],
                 head: Callable[[], Sha]) -> None:
        self.repo = repo
        self.running = running      # key -> (worktree, start) of each running attempt
        self.head = head
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._latest: Round | None = None
        self._error: BaseException | None = None     # a bug in a round: raised in the loop, not swallowed
        self.rounds = 0
        self.busy = 0.0            # seconds spent in rounds
        self._thread = threading.Thread(target=self._run, name="wswarm-forecast", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the rounds: a snapshot under way is killed, and a thread stuck anyway (an open() an
        agent made block) is left behind, a daemon, rather than holding the run."""
        self._stop.set()
        self._thread.join(timeout=SNAPSHOT_TIMEOUT)

    def take(self) -> Round | None:
        """The newest round not taken yet. A round that failed unexpectedly raises its error here."""
        if self._error is not None:
            raise self._error
        with self._lock:
            latest, self._latest = self._latest, None
            return latest

    def _run(self) -> None:
        try:
            self._rounds()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread, which raises it
            self._error = exc

    def _rounds(self) -> None:
        interval = MIN_INTERVAL
        while not self._stop.wait(interval):
            began = time.monotonic()
            head = self.head()
            snaps = {}
            for key, (worktree, start) in self.running().items():
                if self._stop.is_set():
                    return
                snap = snapshot(self.repo, worktree, cancel=self._stop)
                if snap is not None:
                    snaps[key] = (start, snap)
            try:
                result = forecast(self.repo, head, snaps)
            except CommandError:
                continue           # an object that went away mid-round (a pruned branch): next round
            spent = time.monotonic() - began
            self.rounds += 1
            self.busy += spent
            with self._lock:
                self._latest = result
            interval = min(MAX_INTERVAL, max(MIN_INTERVAL, spent / CPU_SHARE - spent))
