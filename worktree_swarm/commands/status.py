"""What `wswarm status` reports: the run and its tasks, as data.

`status --json` is answered without typer (see `__main__`), so this module and what it imports
stay light: no pygit2, rich or model client on this path."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worktree_swarm.gate.report import GateReport, findings_of
from worktree_swarm.git.repo import Repo
from worktree_swarm.store.run_store import ACTIVE_STATUSES, AttemptRow, RunStore, find_run, list_runs
from worktree_swarm.store import layout
from worktree_swarm.store.metrics import Figures, run_figures, wanted

# An attempt still going, or stopped by Ctrl-C: it has no verdict to show.
_UNSETTLED = ("running", "interrupted")


def session_id(attempt: AttemptRow) -> str | None:
    """The Claude Code session an attempt ran in (its `agent-finished` usage), if it had one."""
    if not attempt.usage:
        return None
    value = json.loads(attempt.usage).get("session_id")
    return str(value) if value else None


def last_session(attempts: Sequence[AttemptRow]) -> str | None:
    """The session of the latest attempt that reported one."""
    return next((s for a in reversed(attempts) if (s := session_id(a))), None)


def resume_command(session: str, worktree: str | None) -> str:
    """The shell command that reopens SESSION where the agent worked: `claude --resume` finds a
    session by the folder it ran in."""
    command = f"claude --resume {shlex.quote(session)}"
    return f"cd {shlex.quote(worktree)} && {command}" if worktree else command


def last_finished(attempts: Sequence[AttemptRow]) -> AttemptRow | None:
    """The latest attempt with a verdict: the one whose findings explain where the task stands."""
    return next((a for a in reversed(attempts) if a.outcome not in _UNSETTLED), None)


def status_data(store: RunStore) -> dict[str, Any]:
    """The run and its tasks. Tasks of a run nobody drives any more never claim to be running.

    Each task carries the findings of its latest finished attempt (every failing or warning check's
    file, line and message) and the Claude Code session id of its latest attempt that had one."""
    run = store.run()
    state = store.effective_state()
    all_attempts = store.attempts()
    task_rows = store.tasks()
    by_task: dict[str, list[AttemptRow]] = {}
    for a in all_attempts:
        by_task.setdefault(a.task_id, []).append(a)
    tasks = []
    for t in task_rows:
        status, reason = t.status, t.reason
        if state == "interrupted" and status in ACTIVE_STATUSES:
            status, reason = "pending", f"interrupted while {t.status} (attempt {t.attempts}); wswarm resume continues"
        attempts = sorted(by_task.get(t.id, []), key=lambda a: a.n)
        finished = last_finished(attempts)
        session = last_session(attempts)
        tasks.append({"id": t.id, "status": status, "attempts": t.attempts, "branch": t.branch,
                      "reason": reason, "merge_commit": t.merge_commit, "worktree": t.worktree,
                      "cost_usd": round(t.cost_usd, 6),
                      "findings": [f.data() for f in findings_of(finished.gate if finished else None)],
                      "session_id": session,
                      "resume": resume_command(session, t.worktree) if session and status == "failed" else None})
    merge_gate = None
    if run.merge_gate:
        merge_gate = GateReport.from_json(run.merge_gate).verdict
    title = run.options.get("title")
    return {"run": run.id, "title": str(title) if title else None, "state": state, "base": run.base, "integration_branch": run.integration_branch,
            "tasks": tasks, "cost_usd": round(run.cost_usd, 6), "merge_gate": merge_gate,
            "created": run.created, "finished": run.finished,
            "pr": str(store.dir / layout.PR_BODY) if (store.dir / layout.PR_BODY).exists() else None,
            "figures": run_figures(task_rows, all_attempts, figure_events(store.dir), state=state, run=run.id).data()}


def figure_events(run_dir: Path) -> list[dict[str, Any]]:
    """The events of the run in RUN_DIR that its figures read; the rest of the log is not parsed
    (agent activity makes most of a long one)."""
    out: list[dict[str, Any]] = []
    try:
        text = (run_dir / layout.EVENTS).read_text(encoding="utf-8")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        if wanted(line):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    return out


def store_figures(store: RunStore) -> Figures:
    """The figures of the run in STORE (see store/metrics.py)."""
    return run_figures(store.tasks(), store.attempts(), figure_events(store.dir), state=store.effective_state(),
                       run=store.run().id)


def open_run(cwd: Path, run_id: str | None) -> RunStore:
    """The store of RUN_ID (default: the newest run) of the repository at CWD; the caller closes it."""
    return RunStore.open(find_run(Repo.discover(cwd).state_dir, run_id))


def run_status(cwd: Path, run_id: str | None) -> dict[str, Any]:
    """`status --json`: the status of RUN_ID (default: the newest run)."""
    store = open_run(cwd, run_id)
    try:
        return status_data(store)
    finally:
        store.close()


def all_status(cwd: Path) -> list[dict[str, Any]]:
    """`status --all`: the status of every run of the repository at CWD, oldest first."""
    rows = []
    for folder in list_runs(Repo.discover(cwd).state_dir):
        store = RunStore.open(folder)
        try:
            rows.append(status_data(store))
        finally:
            store.close()
    return rows


def status_view(cwd: Path, run_id: str | None, *, as_json: bool, all_runs: bool,
                watch: bool) -> list[dict[str, Any]] | dict[str, Any] | RunStore:
    """What `wswarm status` shows: every run's status (--all), one run's (--json), or else the open
    store of RUN_ID for the board or --watch (the caller closes it); --watch combines with neither."""
    if watch and (as_json or all_runs):
        from worktree_swarm.util.errors import UsageError

        raise UsageError("--watch follows one run on the terminal; it does not combine with "
                         + ("--json" if as_json else "--all"), hint="wswarm status --watch [RUN]")
    if all_runs:
        return all_status(cwd)
    if as_json:
        return run_status(cwd, run_id)
    return open_run(cwd, run_id)


def run_lines(runs: list[dict[str, Any]]) -> list[str]:
    """`status --all` on the terminal: a line a run (its id, state, tasks merged, integration branch)."""
    lines = []
    for row in runs:
        tasks = row["tasks"]
        assert isinstance(tasks, list)
        merged = sum(t["status"] == "merged" for t in tasks)
        lines.append(f"{row['run']}  {row['state']:<11} {merged}/{len(tasks)} merged  {row['integration_branch']}")
    return lines
