"""Watch the git state agents share with the user: the checkout, refs, the stash, and the files
that make git run code (config, hooks, info/attributes).

A command agent runs with the user's permissions, so nothing stops it from switching the user's
checkout, writing into it by absolute path, moving refs, popping the shared stash (refs/stash is
shared by every worktree), or planting `core.fsmonitor` or a hook in the common dir for every later
git call to run. wswarm cannot prevent that; it notices it, restores what it can restore without
guessing (stash entries, which are commits; the code-bearing files, whose changed copies are kept
aside), and says who ran while it happened.
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm.util import proc
from worktree_swarm.git.repo import Repo

# Branches of wswarm's runs are not the user's.
_OURS = "refs/heads/wswarm/"
_TASKS = re.compile(r"refs/heads/wswarm/[^/]+/tasks/")     # the task branches of a run
# Files in the common dir that decide what git executes, and the folder of its hooks.
CODE_FILES = ("config", "config.worktree", "info/attributes")
HOOKS = "hooks"


@dataclass(frozen=True)
class Snapshot:
    """What the user's side of the repository looks like at one moment."""

    head: str                                   # the checkout's HEAD: a ref name, or a commit id
    branches: dict[str, str]                    # refs/heads/* but wswarm/*: name -> commit
    stash: tuple[tuple[str, str], ...]          # (commit, message), newest first
    checkout: frozenset[tuple[str, int, int]]   # changed/untracked files: (path, size, mtime_ns)
    others: dict[str, str] = field(default_factory=dict)   # tags, remotes, notes, other runs' branches
    code: dict[str, bytes] = field(default_factory=dict)    # CODE_FILES and hooks/*: path -> content


@dataclass(frozen=True)
class Change:
    kind: str          # head | branch | ref | stash-lost | stash-added | checkout | code
    detail: str


@dataclass
class Findings:
    changes: list[Change] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)   # stash entries put back
    put_back: list[str] = field(default_factory=list)   # code-bearing files restored
    # The checkout's files were listed anew for this comparison: now, or by the background listing
    # started at the last `Guard.scan_in_background`.
    files_scanned: bool = False

    def describe(self) -> str:
        text = "; ".join(c.detail for c in self.changes)
        if self.restored:
            text += f" (restored {len(self.restored)} stash entr{'y' if len(self.restored) == 1 else 'ies'})"
        if self.put_back:
            text += f" (put back: {', '.join(self.put_back)})"
        return text

    @property
    def git_state(self) -> bool:
        """Changes no task has any business making: a switched checkout, a popped or dropped stash,
        a file that makes git run code. They fail the attempts that ran."""
        return any(c.kind in ("head", "stash-lost", "code") for c in self.changes)


def snapshot(repo: Repo, *, checkout: frozenset[tuple[str, int, int]] | None = None, own: str = "") -> Snapshot:
    """Refs read through libgit2 (microseconds), the code-bearing files read whole (a few KB); the
    changed files are git status's (one process). Refs under OWN (the run's own prefix, moved by
    its agents and its train) are left out."""
    pygit = repo.pygit
    head_ref = pygit.lookup_reference("HEAD")
    head = str(head_ref.target)      # a ref name when on a branch, else the commit id
    refs = _ref_files(repo.common_dir, own)
    if refs is None:
        # One pass that reads each ref as it lists it (a ref deleted meanwhile is simply not listed);
        # not a listing and then references.get(name) for each, which pygit2 1.21 makes keep every name.
        refs = {ref.name: str(ref.target) for ref in pygit.references.iterator()
                if not (own and ref.name.startswith(own)) and not _TASKS.match(ref.name)}
    refs.pop("refs/stash", None)
    branches = {n: t for n, t in refs.items() if n.startswith("refs/heads/") and not n.startswith(_OURS)}
    others = {n: t for n, t in refs.items() if n not in branches}
    stash_ref = pygit.references.get("refs/stash")
    stash: tuple[tuple[str, str], ...] = ()
    if stash_ref is not None:
        stash = tuple((str(entry.oid_new), entry.message) for entry in stash_ref.log())
    return Snapshot(head=head, branches=branches, stash=stash,
                    checkout=_checkout_files(repo) if checkout is None else checkout,
                    others=others, code=_code_files(repo.common_dir))


def _ref_files(common: Path, own: str) -> dict[str, str] | None:
    """Every ref but those under OWN and the task branches of wswarm's runs, read from git's files
    (`packed-refs`, then the loose ones, which win), name -> what the file says: a commit id, or
    `ref: NAME` for a symbolic one. Those folders are not walked: task branches, a hundred or a
    thousand a run, were most of what a listing of every ref read on every outcome (each read of a
    ref a wait for the interpreter lock behind the agents' threads), and they are wswarm's record of
    attempts, not the user's (another run's integration branch is watched). None when the repository
    keeps its refs another way (reftable). Never through a link: one in a ref's place reads as a
    change."""
    if os.path.lexists(common / "reftable"):
        return None
    refs: dict[str, str] = {}
    try:
        packed = proc.read_bytes(common / "packed-refs")
    except FileNotFoundError:
        packed = b""
    except OSError:
        packed, refs["packed-refs"] = b"", "not a regular file"
    for line in packed.decode("utf-8", errors="replace").splitlines():
        if line and line[0] not in "#^":
            value, _, name = line.partition(" ")
            if not (own and name.startswith(own)) and not _TASKS.match(name):
                refs[name] = value
    # Plain strings and descriptors: a path object per ref costs more than reading it.
    top = os.fspath(common) + os.sep
    skip = top + own.rstrip("/") if own else None
    folders = [top + "refs"]
    while folders:
        folder = folders.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue        # gone meanwhile, or not a folder: its refs are simply not listed
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if entry.path != skip and not (entry.name == "tasks" and _TASKS.match(entry.path[len(top):] + "/")):
                    folders.append(entry.path)
            elif not entry.name.endswith(".lock"):
                name = entry.path[len(top):].replace(os.sep, "/")
                try:
                    fd = proc.open_regular(Path(entry.path), os.O_RDONLY)
                except FileNotFoundError:
                    continue        # deleted meanwhile (and from packed-refs first, as git deletes)
                except OSError:
                    refs[name] = "not a regular file"
                    continue
                try:
                    refs[name] = os.read(fd, 4096).decode("utf-8", errors="replace").strip()
                finally:
                    os.close(fd)
    return refs


def _code_files(common: Path) -> dict[str, bytes]:
    """The common dir's files that decide what git runs, by path; never through a link (a link in
    their place is recorded as its target's name, so it shows as a change)."""
    out: dict[str, bytes] = {}
    names = list(CODE_FILES)
    if (common / HOOKS).is_symlink():
        # The hooks folder itself swapped for a link: one change, never a folder to walk through.
        out[HOOKS] = b"a link to " + os.fsencode(os.readlink(common / HOOKS))
    else:
        try:
            names += [f"{HOOKS}/{entry.name}" for entry in os.scandir(common / HOOKS)]
        except OSError:
            pass
    for name in names:
        path = common / name
        try:
            out[name] = proc.read_bytes(path)
        except FileNotFoundError:
            continue
        except OSError:
            out[name] = b"not a regular file: " + os.fsencode(os.readlink(path) if path.is_symlink() else "?")
    return out


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
    for name in sorted(set(before.others) | set(after.others)):
        old_sha, new_sha = before.others.get(name), after.others.get(name)
        if old_sha == new_sha:
            continue
        what = ("was created" if old_sha is None else "was deleted" if new_sha is None
                else f"moved from {old_sha[:12]} to {new_sha[:12]}")
        changes.append(Change("ref", f"{name.removeprefix('refs/')} {what}"))
    for name in sorted(set(before.code) | set(after.code)):
        if before.code.get(name) != after.code.get(name):
            what = ("was added" if name not in before.code else "was removed" if name not in after.code
                    else "was changed")
            changes.append(Change("code", f".git/{name} {what} (it decides what git runs)"))
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


def restore_code(repo: Repo, before: Snapshot, after: Snapshot) -> list[str]:
    """Put the code-bearing files back as they were; a changed or added one is first kept aside
    (under wswarm's folder, never run), so nothing anyone wrote is lost."""
    aside = repo.state_dir / "tampered" / time.strftime("%Y%m%d-%H%M%S")
    done: list[str] = []
    hooks = repo.common_dir / HOOKS
    if hooks.is_symlink():
        # Put aside the link itself (never what it points at) and make the folder again.
        aside.mkdir(parents=True, exist_ok=True)
        os.replace(hooks, aside / HOOKS)
        hooks.mkdir()
        done.append(f".git/{HOOKS}")
    for name in sorted(set(before.code) | set(after.code)):
        if before.code.get(name) == after.code.get(name) or name == HOOKS:
            continue
        path = repo.common_dir / name
        if os.path.lexists(path):
            aside.mkdir(parents=True, exist_ok=True)
            os.replace(path, aside / name.replace("/", "%2F"))
        if name in before.code:
            tmp = path.with_name(f".{path.name}.wswarm-restore")
            proc.write_new(tmp, before.code[name])
            if name.startswith(f"{HOOKS}/"):
                tmp.chmod(0o755)
            os.replace(tmp, path)
        done.append(f".git/{name}")
    return done


def _short(ref: str) -> str:
    return ref.removeprefix("refs/heads/") if ref.startswith("refs/") else ref[:12]


class Guard:
    """Watches the shared state across attempts; thread-safe, one per run. OWN is the run's own ref
    prefix (its task branches and integration branch, which it checks itself)."""

    def __init__(self, repo: Repo, *, own: str = "") -> None:
        self.repo = repo
        self.own = own
        self._lock = threading.Lock()
        self._last = snapshot(repo, own=own)
        self._listing: Future[frozenset[tuple[str, int, int]]] | None = None

    def scan_in_background(self) -> None:
        """Start listing the checkout's changed files on a thread of its own, unless a listing is
        under way: `git status` walks the whole tree (~15 ms at 5,000 files, ~90 at 50,000), which
        need not hold up whoever checks. The next `check` once it is done compares what it found."""
        with self._lock:
            if self._listing is not None:
                return
            listing = self._listing = Future()

        def work() -> None:
            try:
                listing.set_result(_checkout_files(self.repo))
            except BaseException as exc:   # noqa: BLE001 — raised by the check that takes it
                listing.set_exception(exc)

        threading.Thread(target=work, name="wswarm-guard-scan", daemon=True).start()

    def scanning(self) -> bool:
        """A background listing is under way or done and not yet compared."""
        with self._lock:
            return self._listing is not None

    def check(self, *, scan_files: bool = True) -> Findings:
        """What changed since the last check; lost stash entries and code-bearing files are
        restored at once (refs are reported: the user's own, or another run's, move too). SCAN_FILES
        lists the checkout's files now (after waiting out a background listing, which this one makes
        stale); without it they are compared only when a background listing has finished (refs
        are µs; `git status` walks the tree)."""
        with self._lock:
            listing, scanned = self._listing, scan_files
            keep = None if scan_files else self._last.checkout
            if listing is not None and (scan_files or listing.done()):
                self._listing = None
                files = listing.result()     # waits, when scanning now; raises what the listing raised
                if not scan_files:
                    keep, scanned = files, True
            now = snapshot(self.repo, checkout=keep, own=self.own)
            findings = Findings(compare(self._last, now), files_scanned=scanned)
            if any(c.kind == "stash-lost" for c in findings.changes):
                findings.restored = restore_stash(self.repo, self._last, now)
            if any(c.kind == "code" for c in findings.changes):
                findings.put_back = restore_code(self.repo, self._last, now)
            if findings.restored or findings.put_back:
                now = snapshot(self.repo, checkout=now.checkout, own=self.own)
            self._last = now
            return findings
