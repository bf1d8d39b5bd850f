"""Which attempts ran while the state shared with the user changed: the guard's findings pinned on the
attempts that ran meanwhile, and an attempt that may carry what it took failed rather than merged."""

from __future__ import annotations

import time

from worktree_swarm.store.events import EventKind
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.guard import Guard

Key = tuple[str, int]      # (task, attempt)


class SharedStateWatch:
    """The windows of attempts between the guard's checks (orchestrator thread only)."""

    def __init__(self, guard: Guard, store: RunStore) -> None:
        self.guard = guard
        self.store = store
        self._here: set[Key] = set()            # attempts running on this machine
        self._window: set[Key] = set()          # attempts that ran here since the last guard check
        self._suspects: set[Key] = set()        # ran while shared git state changed
        self._suspect_reason = ""
        self._scanned = time.monotonic()        # when the last listing of the checkout's files began
        self._file_window: set[Key] = set()     # attempts that ran since the files compared last
        self._listing_window: set[Key] = set()  # ran since the listing under way began

    def began(self, key: Key, *, here: bool = True) -> None:
        """Attempt KEY runs from now on, on this machine (HERE) or on a worker: the next check counts
        one that runs here among those that ran. A worker's agent works in the worker's own clone."""
        if here:
            self._here.add(key)
            self._window.add(key)

    def check(self, out: Outcome | None, live: set[Key]) -> None:
        """Before OUT is judged (LIVE: the attempts still running, OUT's not among them): did the user's
        checkout, branches or stash change while it ran? Lost stash entries are already restored; a
        git-level change (a switched checkout, a popped stash) fails every attempt that ran meanwhile,
        since any of them may carry what it took, and none is merged on trust. OUT None: the last word,
        which lists the checkout's files here and now."""
        me = (out.task.id, out.n) if out is not None else None
        if me is not None and me not in self._here and not self._window:
            return      # nothing ran here since the last check: nothing here to look at or to blame
        if me is not None:
            self._here.discard(me)
        live = live & self._here
        # The checkout's files (a warning only) are listed at most once a second, on the guard's
        # thread: `git status` walks the whole tree (~15 ms at 5,000 files, ~90 at 50,000), which
        # would hold up this merge. A check compares the last listing once it is done; refs and the
        # stash are read here (~20 us a loose ref). The last word (no attempt) lists them here and now.
        findings = self.guard.check(scan_files=me is None)
        ran, self._window = sorted(self._window), set(live)
        self._file_window.update(ran)
        self._listing_window.update(ran)
        scanned = sorted(self._file_window)      # who ran since the files were last looked at
        if findings.files_scanned:
            # Looked at since that listing began: who ran since then, still running or not.
            self._file_window = set(live) if me is None else self._listing_window
            self._listing_window = set()
        if me is not None and not self.guard.scanning() and time.monotonic() - self._scanned >= 1.0:
            self.guard.scan_in_background()
            self._scanned = time.monotonic()
            self._listing_window = set(live)
        if not findings.changes:
            return
        who = sorted(set(ran) | set(scanned)) if any(c.kind == "checkout" for c in findings.changes) else ran
        self.store.event(EventKind.SHARED_STATE_CHANGED, detail=findings.describe(), restored=findings.restored or None,
                         agents_running=[f"{t}#{n}" for t, n in who],
                         blamed=len(ran) == 1 and findings.git_state)
        if findings.git_state:
            self._suspects.update(ran)
            self._suspect_reason = findings.describe()
        if out is not None and me in self._suspects and out.kind not in ("interrupted",):
            self._suspects.discard(me)
            alone = "" if ran == [me] else " (other agents ran at the same time)"
            out.kind = "agent-failed"
            out.reason = f"git state shared with the user changed while this agent ran{alone}: {self._suspect_reason}"
            out.feedback = (out.reason + "\nWork only inside your worktree: never switch the user's checkout, "
                            "create branches, use git stash (the stash is shared by every worktree), or change "
                            "git's configuration or hooks.")
