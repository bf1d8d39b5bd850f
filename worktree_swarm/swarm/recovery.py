"""Recovering after a crash: what the dead orchestrator left running or checked out, and the
orchestrator's picture of the run rebuilt from the store, as far as git confirms it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from worktree_swarm.agents.command import last_lines
from worktree_swarm.gate.report import GateReport
from worktree_swarm.git.diff import FileChange
from worktree_swarm.util import proc
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.slot_files import keep_aside
from worktree_swarm.git.worktrees import list_worktrees, prune_worktrees, remove_worktree
from worktree_swarm.plan import Plan
from worktree_swarm.store.events import EventKind
from worktree_swarm.store.run_store import AttemptRow, RunStore
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import Executor
from worktree_swarm.swarm.scheduler import ACTIVE, AttemptKind, Scheduler, TaskStatus
from worktree_swarm.train.result_gate import train
from worktree_swarm.util.redact import redact_secrets
from worktree_swarm.util.types import BranchName, RunId, Sha
from worktree_swarm.store import layout


def reconcile(repo: Repo, store: RunStore, run_id: RunId) -> tuple[int, int]:
    """After a crash: stop the agents and checks the dead orchestrator left running, and remove the
    worktrees of attempts that are over (a failed task's last one stays for inspection)."""
    killed = sum(proc.kill_orphan(pidfile) for pidfile in store.dir.rglob("*.pid") if _ours(pidfile, store.dir))
    keep = {t.worktree for t in store.tasks() if t.status == "failed" and t.worktree}
    # A failed task's slot the crash kept from being set aside; the other slots the dead run held
    # are reset by the next pool that claims them.
    keep_aside(repo, keep)
    removed = 0
    for info in list_worktrees(repo):
        if info.path.name.startswith(f"{run_id}--") and str(info.path) not in keep:
            remove_worktree(repo, info.path)
            removed += 1
    # A crash between making a folder and registering it leaves a folder git does not know.
    for folder in layout.worktrees_dir(repo.state_dir).glob(f"{run_id}--*"):
        if str(folder) not in keep and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
    prune_worktrees(repo)
    return killed, removed


def _ours(pidfile: Path, run_dir: Path) -> bool:
    """Whether wswarm wrote PIDFILE: not one an agent or a check left in the HOME or temp folder of a
    sandbox (it could name any process of the user's, to be killed by the next resume)."""
    parts = pidfile.relative_to(run_dir).parts[:-1]
    return not any(part in ("home", "tmp") and (parent == "scratch" or parent.endswith(".scratch"))
                   for parent, part in zip(parts, parts[1:]))


@dataclass
class Restored:
    """What a started or resumed run takes up from its store, beside the scheduler's task states."""

    recovered: list[AttemptRow] = field(default_factory=list)   # gated before a crash, merged first thing
    adopted: list[tuple[str, int]] = field(default_factory=list)  # go on without this process: collected
    summaries: dict[str, str] = field(default_factory=dict)     # task -> what its merged attempt said
    files: dict[str, list[str]] = field(default_factory=dict)   # merged task -> the paths its last attempt changed
    feedback: dict[str, str | None] = field(default_factory=dict)  # pending task -> what its next attempt is told


def restore_state(repo: Repo, store: RunStore, sched: Scheduler, executor: Executor, *, head: Sha) -> Restored:
    """Put the store's task and attempt rows into SCHED's task states; trust nothing that git does not
    confirm (a merge is one only if it is on the integration branch at HEAD). Rows git contradicts are
    corrected in the store; attempts left running are handed to EXECUTOR to adopt."""
    restored = Restored()
    merges = train_merges(repo, store, head)
    attempts = store.attempts()
    # Attempts granted on top of max_attempts by `wswarm retry`, per task.
    budget = store.run().options.get("budget") or {}
    # Attempts that go on without this process (on workers): collected, not started again.
    left_running = [a for a in attempts if a.outcome == AttemptKind.RUNNING]
    adopted = executor.adopt(left_running) if left_running else set()
    for row in store.tasks():
        task = sched.tasks[row.id]
        task.budget = int(budget.get(row.id, 0))
        restored.summaries[row.id] = row.summary or ""
        mine = [a for a in attempts if a.task_id == row.id]
        task.attempts = {a.n: AttemptKind(a.outcome) for a in mine}
        for a in mine:
            sched.learn(row.id, (path for path, _, _ in json.loads(a.files or "[]")))
        task.status = TaskStatus(row.status)
        landed = next((a for a in reversed(mine) if a.head in merges), None)
        if row.status == "merged" and landed is None:
            task.status = TaskStatus.PENDING
            store.set_task(row.id, status="pending", merge_commit=None,
                           reason="its merge is no longer on the integration branch")
        elif row.status != "merged" and landed is not None:
            # Merged, then the process died before it could record that: git is the truth.
            task.status = TaskStatus.MERGED
            task.attempts[landed.n] = AttemptKind.MERGED
            store.finish_attempt(row.id, landed.n, outcome="merged", finished=landed.finished)
            store.set_task(row.id, status="merged", merge_commit=merges[str(landed.head)], reason=None)
            store.event(EventKind.MERGED, row.id, attempt=landed.n, commit=merges[str(landed.head)], recovered=True)
        gated = mine[-1] if mine and mine[-1].outcome == "gated" and landed is None else None
        if gated is not None and task.status != TaskStatus.MERGED:
            # It passed its gate; only the merge was missing. The agent does not run again.
            task.status = TaskStatus.MERGING
            restored.recovered.append(gated)
        elif task.status in ACTIVE and mine and (row.id, mine[-1].n) in adopted:
            task.status = TaskStatus.GATING if row.status == TaskStatus.GATING else TaskStatus.RUNNING
            task.start_head = mine[-1].start
            restored.adopted.append((row.id, mine[-1].n))
        elif task.status in ACTIVE:
            task.status = TaskStatus.PENDING
            store.set_task(row.id, status="pending", reason="interrupted; will start again")
        if task.status == TaskStatus.MERGED and mine:
            restored.files[row.id] = [path for path, _, _ in json.loads(mine[-1].files or "[]")]
        # An interrupted attempt was sent nothing back: the feedback is its predecessor's.
        told = next((a for a in reversed(mine) if a.outcome not in (AttemptKind.INTERRUPTED, AttemptKind.RUNNING)),
                    None)
        if task.status == TaskStatus.PENDING and told is not None:
            saved = store.attempt_dir(row.id, told.n) / layout.NEXT_FEEDBACK
            try:    # never through a link planted there: its target would go to an agent as feedback
                restored.feedback[row.id] = proc.read_text(saved)
            except OSError:
                restored.feedback[row.id] = None
    return restored


def train_merges(repo: Repo, store: RunStore, head: Sha) -> dict[str, str]:
    """{merged branch head: merge commit} along the integration branch's first-parent chain."""
    return {m.theirs: m.commit for m in train(repo, Sha(store.run().base), head)}


def recovered_outcome(store: RunStore, plan: Plan, a: AttemptRow, *, secrets: Collection[str]) -> Outcome:
    """The outcome of attempt A, which passed its gate before a crash kept it from merging, as it
    was when the attempt first finished (its summary is what its agent's log ends with)."""
    files = json.loads(a.files or "[]")
    log = store.attempt_dir(a.task_id, a.n) / layout.AGENT_LOG
    summary = redact_secrets(last_lines(log, 5), known=secrets)
    return Outcome(task=plan[a.task_id], n=a.n, kind="gated", branch=BranchName(a.branch), start=Sha(a.start),
                   head=Sha(str(a.head)), summary=summary, report=GateReport.from_json(a.gate or '{"checks": []}'),
                   changes=[FileChange(p, added, removed) for p, added, removed in files])
