"""`wswarm retry`: new attempts, with a fresh attempt budget, for a finished run's failed tasks and
the tasks they blocked, on top of its integration branch (merged work is kept)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worktree_swarm.git.repo import Repo, require_git
from worktree_swarm.gate.report import GateReport, tail
from worktree_swarm.plan import Plan, plan_from_data
from worktree_swarm.store import layout
from worktree_swarm.store.run_store import AttemptRow, RunRow, RunStore, find_run, list_runs
from worktree_swarm.swarm.scheduler import charged
from worktree_swarm.swarm.session import Notify, RunResult, View
from worktree_swarm.commands.resume import carry_on, locked_run, prepare
from worktree_swarm.util import proc
from worktree_swarm.util.errors import RunNotFoundError, UsageError
from worktree_swarm.util.redact import redact_secrets
from worktree_swarm.store.events import EventKind

RETRYABLE = ("failed", "blocked")


@dataclass(frozen=True)
class RetryOptions:
    run: str | None = None              # default: the newest run
    tasks: tuple[str, ...] = ()         # default: every failed or blocked task
    agent_cmd: str | None = None
    max_attempts: int | None = None     # attempts each retried task gets now
    agents: int | None = None


def retry(*, cwd: Path, options: RetryOptions, notify: Notify, view: View | None = None) -> RunResult:
    """Give the failed tasks of a finished run (or only OPTIONS.tasks) and every task they blocked a
    fresh attempt budget, and drive the run again from its integration head. Every refusal comes
    before anything is changed."""
    repo = Repo.discover(cwd)
    require_git(repo.root)
    run, named = _split_arguments(repo, options)
    store = locked_run(repo, run)
    try:
        store.migrate()
        row = store.run()
        _refuse_unfinished(row)
        chosen = _chosen(store, row, named, plan_from_data(json.loads(row.plan), source=f"run {row.id}"))
        _refuse_moved_branch(repo, row)
        given = {"agent_cmd": options.agent_cmd, "max_attempts": options.max_attempts, "agents": options.agents}
        overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        attempts = store.attempts()
        # The scheduler gives a task up once its charged attempts reach max_attempts + budget: a budget
        # of what each has spent already makes the next max_attempts fresh.
        budget = dict(row.options.get("budget") or {})
        budget.update({t: charged(a.outcome for a in attempts if a.task_id == t) for t in chosen})
        new_options = {**row.options, **overrides, "budget": budget}
        driving = prepare(repo, row, new_options)
    except BaseException:
        store.close()
        raise
    try:
        store.set_run(options=json.dumps(new_options))
        for task_id in chosen:
            mine = [a for a in attempts if a.task_id == task_id]
            if mine:
                _feedback_for_next(store, mine[-1])
            # A failed attempt's slot stays kept aside for inspection (on its branch) until `wswarm
            # clean`; the pool never hands a kept slot out, so the new attempt gets another.
            store.set_task(task_id, status="pending", reason="retrying", worktree=None)
    except BaseException:
        store.close()
        raise
    if "agent_cmd" in overrides:
        overrides["agent_cmd"] = redact_secrets(str(overrides["agent_cmd"]))
    return carry_on(repo, store, driving, notify, view, event=EventKind.RUN_RETRIED,
                    says=f"retrying run {row.id}: {', '.join(chosen)}", tasks=chosen, overrides=overrides or None)


def _split_arguments(repo: Repo, options: RetryOptions) -> tuple[str | None, list[str]]:
    """RUN and TASKs. A first argument that names no run but a task of the newest run is a task,
    so `wswarm retry TASK` works without the run's id."""
    if options.run is None:
        return None, list(options.tasks)
    try:
        find_run(repo.state_dir, options.run)
    except RunNotFoundError:
        runs = list_runs(repo.state_dir)
        if runs and options.run in _task_ids_of(runs[-1]):
            return None, [options.run, *options.tasks]
        raise
    return options.run, list(options.tasks)


def _task_ids_of(run_dir: Path) -> set[str]:
    store = RunStore.open(run_dir)
    try:
        return {t.id for t in store.tasks()}
    finally:
        store.close()


def _refuse_unfinished(row: RunRow) -> None:
    # The lock is ours: a run not marked finished stopped before its end.
    if row.state != "finished":
        raise UsageError(f"run {row.id} was interrupted; it has not finished",
                         hint=f"continue it with: wswarm resume {row.id}")


def _chosen(store: RunStore, row: RunRow, named: list[str], plan: Plan) -> list[str]:
    """The tasks to retry, in plan order: NAMED (default: every failed task) and every task depending
    on them, directly or not, that has not merged."""
    status = {t.id: t.status for t in store.tasks()}
    if not any(s in RETRYABLE for s in status.values()):
        raise UsageError(f"run {row.id}: every task merged; there is nothing to retry",
                         hint="see it with: wswarm status")
    for task_id in named:
        if task_id not in status:
            raise UsageError(f"run {row.id} has no task {task_id!r}",
                             hint=f"its tasks: {', '.join(status)}")
        if status[task_id] not in RETRYABLE:
            raise UsageError(f"task {task_id!r} of run {row.id} is {status[task_id]}; only failed or blocked "
                             "tasks are retried", hint=f"retry every failed task with: wswarm retry {row.id}")
    deps = {str(t.id): [str(d) for d in t.dependencies] for t in plan}
    order = [str(t) for t in plan.ids()]
    roots = set(named) if named else {t for t, s in status.items() if s in RETRYABLE}
    chosen = set(roots)
    changed = True
    while changed:
        more = {t for t, ds in deps.items() if t not in chosen and status.get(t) in RETRYABLE
                and any(d in chosen for d in ds)}
        chosen |= more
        changed = bool(more)
    for task_id in sorted(chosen, key=order.index):
        stuck = [d for d in deps.get(task_id, []) if d not in chosen and status.get(d) != "merged"]
        if stuck:
            raise UsageError(f"task {task_id!r} cannot start: it depends on {stuck[0]!r}, which "
                             f"{status.get(stuck[0])} and is not retried",
                             hint=f"retry both: wswarm retry {row.id} {stuck[0]}")
    return sorted(chosen, key=order.index)


def _refuse_moved_branch(repo: Repo, row: RunRow) -> None:
    """The run goes on only from the head it recorded; a branch moved since is the user's now."""
    found = repo.branch_sha(row.integration_branch)
    if row.integration_head and found is not None and found != row.integration_head:
        raise UsageError(f"the integration branch {row.integration_branch} of run {row.id} has moved since the "
                         f"run finished (it is at {found[:12]}, the run left it at {row.integration_head[:12]})",
                         hint=f"put it back (git update-ref refs/heads/{row.integration_branch} "
                              f"{row.integration_head}), or start a new run")


def _feedback_for_next(store: RunStore, last: AttemptRow) -> None:
    """What the task's last attempt got wrong, for its next one: the loop writes it for a task it
    re-queues, not for one it gives up on."""
    path = store.attempt_dir(last.task_id, last.n) / layout.NEXT_FEEDBACK
    if path.is_file() or not path.parent.is_dir():
        return
    reason = last.reason or f"it ended as {last.outcome}"
    text = f"Your previous attempt (attempt {last.n}) failed: {reason}."
    if last.outcome == "gate-failed" and last.gate:
        text += "\n\n" + GateReport.from_json(last.gate).render()
    elif last.outcome in ("agent-failed", "timeout", "error"):
        log = path.parent / layout.AGENT_LOG
        if log.is_file():
            # Written by the agent: read without following a link it may have left there.
            text += "\n\nThe end of its output:\n" + tail(proc.read_text(log), 20)
    elif last.outcome == "conflict":
        text += ("\nThis attempt starts from the current integration head, which contains the work merged "
                 "meanwhile. Redo your change on top of it.")
    proc.write_new(path, (text + "\n").encode("utf-8", errors="replace"))

