"""The dashboard's data: runs, a run's tasks with their attempts, gate reports, diffs and logs, the
task DAG laid out in layers, and what the run cost. Plain data for the HTTP server to send as JSON
or text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx

from worktree_swarm.util.errors import CommandError, RunNotFoundError
from worktree_swarm.gate.report import findings_of
from worktree_swarm.git.diff import diff_text
from worktree_swarm.git.refs import encode
from worktree_swarm.git.repo import Repo
from worktree_swarm.plan import plan_from_data
from worktree_swarm.store.run_store import AttemptRow, RunStore, list_runs
from worktree_swarm.commands.status import last_session, resume_command, session_id, store_figures
from worktree_swarm.util.types import Sha

LOG_LIMIT = 256 * 1024          # a log is sent from its tail: agents can write megabytes
DIFF_LIMIT = 2 * 1024 * 1024


def runs_index(state_dir: Path) -> list[dict[str, Any]]:
    """Every run of the repository, newest first, with its state and progress."""
    out = []
    for folder in reversed(list_runs(state_dir)):
        store = RunStore.open(folder)
        try:
            row, tasks = store.run(), store.tasks()
            out.append({"id": row.id, "state": store.effective_state(), "title": row.options.get("title") or "",
                        "created": row.created, "finished": row.finished, "tasks": len(tasks),
                        "merged": sum(t.status == "merged" for t in tasks), "cost_usd": round(row.cost_usd, 6),
                        "integration_branch": row.integration_branch})
        finally:
            store.close()
    return out


def figures(store: RunStore) -> dict[str, Any]:
    """What the run cost so far: the `figures` of `status --json` (see store/metrics.py)."""
    return store_figures(store).data()


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def attempt_data(store: RunStore, a: AttemptRow) -> dict[str, Any]:
    """One attempt: its outcome, gate report with what each failing or warning check found (file,
    line, message), files, spend, Claude Code session and log names."""
    folder = store.dir / "attempts" / encode(a.task_id) / str(a.n)
    return {"n": a.n, "outcome": a.outcome, "branch": a.branch, "start": a.start, "head": a.head,
            "started": a.started, "finished": a.finished, "reason": a.reason, "gate": _loads(a.gate),
            "findings": [f.data() for f in findings_of(a.gate)],
            "files": [{"path": p, "added": ad, "removed": rm} for p, ad, rm in _loads(a.files) or []],
            "added": a.added, "removed": a.removed, "cost_usd": round(a.cost_usd, 6), "usage": _loads(a.usage),
            "session_id": session_id(a),
            "logs": sorted(p.name for p in folder.glob("*.log")) if folder.is_dir() else []}


def tasks_data(store: RunStore, task_id: str | None = None) -> list[dict[str, Any]]:
    """The plan's tasks with their state row and every attempt (gate report, files, spend)."""
    plan = {str(t["id"]): t for t in json.loads(store.run().plan)}
    attempts: dict[str, list[dict[str, Any]]] = {}
    rows_of: dict[str, list[AttemptRow]] = {}
    for a in sorted(store.attempts(task_id), key=lambda a: a.n):
        attempts.setdefault(a.task_id, []).append(attempt_data(store, a))
        rows_of.setdefault(a.task_id, []).append(a)
    rows = [store.task(task_id)] if task_id is not None else store.tasks()
    out = []
    for t in rows:
        session = last_session(rows_of.get(t.id, []))
        out.append({"id": t.id, "type": plan[t.id].get("type", ""), "description": plan[t.id].get("description", ""),
                    "dependencies": plan[t.id].get("dependencies", []), "declared_files": plan[t.id].get("files", []),
                    "status": t.status, "attempts": attempts.get(t.id, []),
                    "reason": t.reason, "summary": t.summary, "merge_commit": t.merge_commit,
                    "branch": t.branch, "cost_usd": round(t.cost_usd, 6), "session_id": session,
                    "resume": resume_command(session, t.worktree) if session and t.status == "failed" else None})
    return out


def _attempt(store: RunStore, task_id: str, n: int) -> AttemptRow:
    store.task(task_id)   # an unknown task is a RunNotFoundError naming it
    for a in store.attempts(task_id):
        if a.n == n:
            return a
    raise RunNotFoundError(f"task {task_id!r} has no attempt {n}")


def attempt_diff(repo: Repo, store: RunStore, task_id: str, n: int) -> str:
    """`git diff start..head` of one attempt; empty while the attempt has made no commit."""
    a = _attempt(store, task_id, n)
    if a.head is None:
        return ""
    try:
        text = diff_text(repo, Sha(a.start), Sha(a.head))
    except CommandError:
        raise RunNotFoundError(f"the commits of {task_id!r} attempt {n} are gone (garbage-collected?)") from None
    if len(text) > DIFF_LIMIT:
        text = text[:DIFF_LIMIT] + f"\n[… cut at {DIFF_LIMIT // 1024} KiB]\n"
    return text


def attempt_log(store: RunStore, task_id: str, n: int, name: str) -> str:
    """The tail of one log of one attempt (a file name from attempt_data's `logs`)."""
    _attempt(store, task_id, n)
    folder = store.dir / "attempts" / encode(task_id) / str(n)
    logs = {p.name: p for p in folder.glob("*.log")} if folder.is_dir() else {}
    if name not in logs:   # only names listed in the folder: never a path from the request
        raise RunNotFoundError(f"attempt {n} of {task_id!r} has no log {name!r}")
    with open(logs[name], "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - LOG_LIMIT))
        data = f.read()
    text = data.decode("utf-8", errors="replace")
    return (f"[… {size - LOG_LIMIT} bytes cut …]\n" + text) if size > LOG_LIMIT else text


def dag(store: RunStore) -> dict[str, Any]:
    """Nodes in layers (a layer's tasks depend only on earlier layers), ordered within each layer
    by where their dependencies sit, which keeps edges from crossing much; and the edges."""
    row = store.run()
    plan = plan_from_data(json.loads(row.plan), source=f"run {row.id}")
    graph = plan.graph
    index = {str(tid): i for i, tid in enumerate(plan.ids())}
    order: dict[str, float] = {}
    nodes = []
    for layer, generation in enumerate(networkx.topological_generations(graph)):
        def place(tid: str) -> tuple[float, int]:
            deps = [order[d] for d in graph.predecessors(tid)]
            return (sum(deps) / len(deps) if deps else -1.0, index[tid])
        for row_n, tid in enumerate(sorted(generation, key=place)):
            order[tid] = row_n
            task = plan[tid]
            nodes.append({"id": tid, "type": task.type, "description": task.description, "layer": layer,
                          "row": row_n})
    edges = [{"from": str(a), "to": str(b)} for a, b in graph.edges]
    return {"nodes": nodes, "edges": edges, "layers": 1 + max((n["layer"] for n in nodes), default=-1)}
