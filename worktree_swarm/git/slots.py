"""Slots: worktrees that outlive a task, so a task's checkout costs what its change costs.

A task takes a free slot, which `git checkout --force -b` switches to the task's new branch at its
start commit: only the files that differ are written. Released, a slot is scrubbed back to a clean
checkout (untracked files, index flags, half-done git operations) and detached, so no branch stays
checked out in it. Ignored files (installed dependencies, build caches) stay as its warm environment
unless `[worktree] keep_ignored = false`. A slot this process did not scrub itself is reset
completely before use; one that resists is discarded and replaced, never trusted. Where slots live
and what they record: slot_files.py.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.util import proc
from worktree_swarm.config import WorktreeConfig
from worktree_swarm.util.errors import WswarmError
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.slot_files import (TRANSIENT_DIRS, TRANSIENT_FILES, admin_dir, read_meta, real, slots_dir,
                                           put_commondir, try_lock, write_head, write_meta)
from worktree_swarm.git.worktrees import FreshWorktrees, WorktreePool, list_worktrees, remove_worktree
from worktree_swarm.util.types import BranchName, Sha

# A waiting acquire makes one more slot after this long: a lost release must not hang the run.
_WAIT_BEFORE_EXTRA = 30.0
def open_pool(repo: Repo, config: WorktreeConfig, *, size: int, start: Sha, fresh_root: Path) -> WorktreePool:
    """The run's worktree pool: slots, or a fresh worktree per attempt with `[worktree] slots = false`."""
    if not config.slots:
        return FreshWorktrees(repo, fresh_root)
    return SlotPool(repo, size=size, start=start, keep_ignored=config.keep_ignored, setup=config.setup,
                    setup_inputs=config.setup_inputs).open()


@dataclass(eq=False)
class _Slot:
    name: str
    path: Path
    fd: int                      # holds the slot's flock while this process owns it
    trusted: bool = False        # scrubbed by this process since its last task; else reset completely
    head: Sha | None = None      # the commit its files match when trusted
    setup_key: str | None = None     # inputs of a setup step running now, recorded once it succeeds


class SlotPool(WorktreePool):
    """Up to SIZE slots for one run, made in parallel as soon as it opens; thread-safe."""

    def __init__(self, repo: Repo, *, size: int, start: Sha, keep_ignored: bool = True, setup: str | None = None,
                 setup_inputs: tuple[str, ...] = ()) -> None:
        self.repo = repo
        self.size = size
        self.start = start
        self.keep_ignored = keep_ignored
        self.setup = setup
        self.setup_inputs = setup_inputs
        self.root = slots_dir(repo)
        self._cond = threading.Condition()
        self._free: list[_Slot] = []
        self._busy: dict[Path, _Slot] = {}
        self._owned = 0          # free, busy and being made; not the ones kept aside
        self._making = 0
        self._error: BaseException | None = None
        self._closed = False
        self._maker = ThreadPoolExecutor(max_workers=max(1, size), thread_name_prefix="wswarm-slot")

    # -- the pool ------------------------------------------------------------------------------

    def open(self) -> SlotPool:
        """Claim the slots earlier runs left (never one another process holds), make the rest."""
        self.root.mkdir(parents=True, exist_ok=True)
        registered = {real(info.path) for info in list_worktrees(self.repo)}
        for lock in sorted(self.root.glob("slot-*.lock")):
            name, fd = lock.stem, try_lock(lock)
            if fd is None:
                continue
            path = self.root / name
            alive = real(path) in registered and path.is_dir()
            if read_meta(self.root, name).get("kept") and path.is_dir():
                os.close(fd)        # a failed task's worktree, until `wswarm clean`
            elif alive and self._owned < self.size:
                self._free.append(_Slot(name, path, fd))
                self._owned += 1
                if read_meta(self.root, name).get("busy"):
                    write_meta(self.root, name, {})      # its setup record is not to be trusted either
            elif alive:
                os.close(fd)        # a spare, for a run with more agents
            else:
                # Registered without its folder, or a folder git does not know: removed, not trusted.
                self._forget(name, path, fd, registered=real(path) in registered)
        for folder in self.root.glob("slot-*"):
            if folder.is_dir() and not (self.root / f"{folder.name}.lock").exists():
                self._forget(folder.name, folder, None, registered=real(folder) in registered)
        with self._cond:
            while self._owned < self.size:
                self._spawn()
        return self

    def acquire(self, *, name: str, branch: BranchName, start: Sha) -> Path:
        if self.repo.branch_sha(branch) is not None:
            raise WswarmError(f"the branch {branch} already exists", hint="remove it, or clean the run it belongs to")
        self.start = start
        slot = self._take()
        try:
            self._switch(slot, branch, start)
        except (WswarmError, OSError):
            # A slot that cannot be switched is not trusted with a task: a new one takes its place.
            self._discard(slot, replace=False)
            slot = self._make_now(branch, start)
        if self.setup_inputs:
            # Until released: a process that dies mid-task leaves an environment nobody vouches for.
            write_meta(self.root, slot.name, dict(read_meta(self.root, slot.name), busy=True))
        with self._cond:
            self._busy[slot.path] = slot
        return slot.path

    def release(self, path: Path, *, keep: bool) -> None:
        with self._cond:
            slot = self._busy.pop(path, None)
        if slot is None:
            return
        if keep:
            self._keep_aside(slot)
            return
        try:
            self._settle_setup(slot)
            self._drop_transient(slot)
            # Two walks of the whole checkout, neither writing the index: side by side on two cores.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wswarm-clean") as side:
                cleaning = side.submit(self._clean, slot)
                flagged = self._flagged(slot)
                cleaning.result()
            self._clear_flags(slot, flagged)
            slot.head = self._detach(slot)
            slot.trusted = True
        except (WswarmError, OSError):
            self._discard(slot, replace=True)
            return
        with self._cond:
            self._free.append(slot)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._maker.shutdown(wait=True, cancel_futures=True)
        with self._cond:
            for slot in [*self._free, *self._busy.values()]:
                os.close(slot.fd)
            self._free.clear()
            self._busy.clear()

    def _take(self) -> _Slot:
        with self._cond:
            # Measured, not counted in wake-ups: every release and every slot made wakes all waiters.
            extra_at = time.monotonic() + _WAIT_BEFORE_EXTRA
            while not self._free:
                if self._closed:
                    raise WswarmError("the run is stopping; no worktree was handed out")
                if self._error is not None and self._making == 0:
                    error, self._error = self._error, None
                    raise WswarmError(f"could not make a worktree slot: {str(error).splitlines()[0]}")
                if self._making == 0 and (self._owned < self.size or time.monotonic() >= extra_at):
                    self._spawn()
                    extra_at = time.monotonic() + _WAIT_BEFORE_EXTRA
                self._cond.wait(timeout=1.0)
            # The slot released last has the warmest caches and the fewest files to switch.
            return self._free.pop()

    def _make_now(self, branch: BranchName, start: Sha) -> _Slot:
        with self._cond:
            self._owned += 1
        try:
            slot = self._make()
        except BaseException:
            with self._cond:
                self._owned -= 1
            raise
        try:
            self._switch(slot, branch, start)
        except BaseException:
            self._discard(slot, replace=False)
            raise
        return slot

    def _spawn(self) -> None:
        """Make one slot in the background (the caller holds the condition)."""
        self._owned += 1
        self._making += 1
        self._maker.submit(self._make_into_pool)

    def _make_into_pool(self) -> None:
        try:
            slot = self._make()
        except BaseException as exc:  # noqa: BLE001 — handed to the next acquire, which raises it
            with self._cond:
                self._owned -= 1
                self._making -= 1
                self._error = exc
                self._cond.notify_all()
            return
        with self._cond:
            self._making -= 1
            self._free.append(slot)
            self._cond.notify_all()

    # -- one slot ------------------------------------------------------------------------------

    def _make(self) -> _Slot:
        """A new slot at the newest start commit. Its lock exists before its folder, so another
        process never claims (or removes) a slot being made."""
        name = f"slot-{secrets.token_hex(5)}"
        path = self.root / name
        fd = try_lock(self.root / f"{name}.lock")
        if fd is None:
            raise WswarmError(f"could not lock the new slot {name}")
        start = self.start
        try:
            # Only the registration needs the admin lock (8 ms); the checkout, seconds in a large
            # repository, runs outside it, in parallel with the other slots being made.
            with self.repo.worktree_admin:
                self.repo.git("worktree", "add", "--quiet", "--no-checkout", "--detach", path, start)
            self.repo.git("reset", "--hard", "--quiet", cwd=path)
        except BaseException:
            self._forget(name, path, fd, registered=True)
            raise
        return _Slot(name, path, fd, trusted=True, head=start)

    def _switch(self, slot: _Slot, branch: BranchName, start: Sha) -> None:
        if not slot.trusted:
            self._drop_transient(slot)
            self._clear_flags(slot, self._flagged(slot))
            write_head(admin_dir(self.repo, slot.path), start)
        # --force: tracked files become exactly START's, whatever was done to them; only the files
        # that differ from what the index records are written.
        self.repo.git("checkout", "--force", "--quiet", "-b", branch, start, cwd=slot.path)
        # Its reflog entry would let `@{-1}` name the previous task's commit; a fresh worktree's
        # ORIG_HEAD is its start (`worktree add` resets), the previous task's would be a leak.
        admin = admin_dir(self.repo, slot.path)
        (admin / "logs" / "HEAD").unlink(missing_ok=True)
        (admin / "ORIG_HEAD").write_text(start + "\n", encoding="utf-8")
        changed = self._rules_changed(slot.head, start) if slot.trusted else {"attributes", "ignore"}
        if "attributes" in changed and slot.trusted:
            # Files whose content is unchanged may check out differently (eol, filters): rewrite all.
            (admin / "index").unlink(missing_ok=True)
            self.repo.git("reset", "--hard", "--quiet", cwd=slot.path)
        if "ignore" in changed:
            # Released clean under the old rules; under the new ones a kept file may be untracked.
            self._clean(slot)
        slot.trusted, slot.head = False, start      # trusted again once released and scrubbed

    def _drop_transient(self, slot: _Slot) -> None:
        """Undo the git state a task may have left in the slot's own git dir: half-done operations,
        stale locks, per-worktree refs and config."""
        admin = admin_dir(self.repo, slot.path)
        for name in TRANSIENT_FILES:
            (admin / name).unlink(missing_ok=True)
        for name in TRANSIENT_DIRS:
            shutil.rmtree(admin / name, ignore_errors=True)
        # Where git finds the common dir, written by `worktree add` as below. An agent that points it
        # at a folder of its own makes every git command in the slot read that folder's config (its
        # filters run as the user), for every later task and run: put back before any git runs here.
        put_commondir(admin)

    def _flagged(self, slot: _Slot) -> dict[str, list[str]] | None:
        """Index entries marked assume-unchanged (a lower-case tag) or skip-worktree (S), which
        `checkout --force` keeps, and with them a file's content from the previous task; None when
        the index cannot be read."""
        listed = self.repo.git("ls-files", "-v", "-z", cwd=slot.path, check=False)
        if listed.returncode != 0:
            return None
        out = listed.stdout
        # Nearly always every entry is a plain "H": counted at C speed, not split into 50,000 strings.
        if out.count("\0") == out.count("\0H ") + out.startswith("H "):
            return {}
        records = [r for r in out.split("\0") if len(r) > 2]
        return {"--no-assume-unchanged": [r[2:] for r in records if r[0].islower()],
                "--no-skip-worktree": [r[2:] for r in records if r[0] == "S"]}

    def _clear_flags(self, slot: _Slot, flagged: dict[str, list[str]] | None) -> None:
        if flagged is None:
            (admin_dir(self.repo, slot.path) / "index").unlink(missing_ok=True)     # unreadable: rebuilt by checkout
            return
        for flag, paths in flagged.items():
            if paths:
                proc.git("update-index", flag, "-z", "--stdin", cwd=slot.path, input="\0".join(paths) + "\0")

    def _detach(self, slot: _Slot) -> Sha:
        """Point the slot's HEAD at its commit, not at the task's branch, which stays free to delete."""
        admin = admin_dir(self.repo, slot.path)
        head = (admin / "HEAD").read_text(encoding="utf-8").strip()
        sha = self.repo.ref_sha(head.removeprefix("ref: "))
        if sha is None:
            raise WswarmError(f"the slot {slot.name} is on a commit that does not exist ({head})")
        write_head(admin, sha)
        return sha

    def _clean(self, slot: _Slot) -> None:
        # -ff: nested repositories an agent made go too; -x: ignored files as well, when asked.
        self.repo.git("clean", "-ffdq", *([] if self.keep_ignored else ["-x"]), cwd=slot.path)

    def _rules_changed(self, old: Sha | None, new: Sha) -> set[str]:
        """Which of .gitignore / .gitattributes files differ between two commits' trees."""
        if old is None:
            return {"attributes", "ignore"}
        if old == new:
            return set()
        kinds = {".gitignore": "ignore", ".gitattributes": "attributes"}
        changed: set[str] = set()
        for delta in self.repo.pygit.diff(old, new).deltas:
            for path in (delta.old_file.path, delta.new_file.path):
                kind = kinds.get(path.rsplit("/", 1)[-1])
                if kind:
                    changed.add(kind)
        return changed

    def _keep_aside(self, slot: _Slot) -> None:
        """A failed task's slot stays as it is, for inspection; a new slot takes its place."""
        write_meta(self.root, slot.name, dict(read_meta(self.root, slot.name), kept=True))
        os.close(slot.fd)
        with self._cond:
            self._owned -= 1
            if not self._closed:
                self._spawn()

    def _discard(self, slot: _Slot, *, replace: bool) -> None:
        self._forget(slot.name, slot.path, slot.fd, registered=True)
        with self._cond:
            self._owned -= 1
            if replace and not self._closed:
                self._spawn()

    def _forget(self, name: str, path: Path, fd: int | None, *, registered: bool) -> None:
        try:
            if registered:
                remove_worktree(self.repo, path)
            else:
                shutil.rmtree(path, ignore_errors=True)
        finally:
            (self.root / f"{name}.json").unlink(missing_ok=True)
            (self.root / f"{name}.lock").unlink(missing_ok=True)
            if fd is not None:
                os.close(fd)

    # -- the setup step ------------------------------------------------------------------------

    def holds(self, path: Path) -> tuple[int, ...]:
        with self._cond:
            slot = self._busy.get(path)
        return (slot.fd,) if slot is not None else ()

    def setup_needed(self, path: Path) -> bool:
        """Not when the setup step last succeeded in this slot on the same inputs (and ignored files,
        where setups put what they make, were kept); without declared inputs, always."""
        with self._cond:
            slot = self._busy.get(path)
        if slot is None or not self.keep_ignored or not self.setup_inputs:
            return True
        key = self._inputs_key(path)
        meta = read_meta(self.root, slot.name)
        if (meta.get("setup") or {}).get("key") == key:
            return False
        # Forgotten before the step runs: one that dies half-way leaves nothing to trust.
        meta.pop("setup", None)
        write_meta(self.root, slot.name, meta)
        slot.setup_key = key
        return True

    def setup_done(self, path: Path) -> None:
        with self._cond:
            slot = self._busy.get(path)
        if slot is None or slot.setup_key is None:
            return
        # Also the inputs as the step left them (a lockfile it rewrote is still its own work).
        record = {"key": slot.setup_key, "after": self._inputs_key(path)}
        write_meta(self.root, slot.name, dict(read_meta(self.root, slot.name), setup=record))
        slot.setup_key = None

    def _settle_setup(self, slot: _Slot) -> None:
        """A task that changed the inputs (a new dependency installed) leaves an environment that
        matches neither: the next task in this slot runs the setup step again."""
        slot.setup_key = None
        meta = read_meta(self.root, slot.name)
        record = meta.pop("setup", None)
        if record and self.setup_inputs and self._inputs_key(slot.path) in (record.get("key"), record.get("after")):
            meta["setup"] = record
        if meta.pop("busy", None) or record:
            write_meta(self.root, slot.name, meta)

    def _inputs_key(self, path: Path) -> str:
        digest = hashlib.sha256((self.setup or "").encode())
        root = path.resolve()
        for pattern in self.setup_inputs:
            digest.update(b"\0pattern\0" + pattern.encode())
            for found in sorted(root.glob(pattern)):
                if found.is_file() and found.resolve().is_relative_to(root):
                    digest.update(b"\0file\0" + found.relative_to(root).as_posix().encode() + b"\0")
                    digest.update(hashlib.sha256(found.read_bytes()).digest())
        return digest.hexdigest()
