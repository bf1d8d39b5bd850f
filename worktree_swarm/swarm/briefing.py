"""What an attempt is given and told: its port, what its dependencies did, why its last attempt was sent
back (a conflict: whose merge it met, with their hunks), and what its work is heading for."""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

from worktree_swarm.git.diff import changed_paths, diff_text
from worktree_swarm.git.repo import Repo
from worktree_swarm.plan import Plan, Task
from worktree_swarm.swarm.forecast import Forecast
from worktree_swarm.train.result_gate import train
from worktree_swarm.util.types import Sha

FEEDBACK_DIFF_LINES = 200


def free_port(taken: set[int]) -> int:
    """A port free right now and not in TAKEN (handed to another running attempt), so the dev servers
    and test servers of parallel tasks never collide."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port


def dependency_summaries(plan: Plan, task: Task, done: Mapping[str, tuple[str, list[str]]]) -> list[dict[str, Any]]:
    """What every task TASK depends on (directly or not) did, oldest first; DONE: task -> (summary, files)."""
    ancestors = set()
    stack = list(task.dependencies)
    while stack:
        dep = stack.pop()
        if dep not in ancestors:
            ancestors.add(dep)
            stack.extend(plan[dep].dependencies)
    if not ancestors:
        return []
    return [{"id": tid, "description": plan[tid].description, "summary": done[tid][0], "files": done[tid][1]}
            for tid in plan.topological_order() if tid in ancestors]


def merged_meanwhile(repo: Repo, *, start: Sha, integration: Sha, files: list[str],
                     merged: Mapping[str, str]) -> list[tuple[str, Sha, Sha, list[str]]]:
    """The tasks merged between START and INTEGRATION that changed any of FILES: (task, parent, merge
    commit, paths). MERGED maps a merged branch head to its task."""
    wanted = set(files)
    found = []
    for merge in train(repo, start, integration):
        paths = sorted(wanted & changed_paths(repo, merge.parent, merge.commit))
        if paths and merge.theirs in merged:
            found.append((merged[merge.theirs], merge.parent, merge.commit, paths))
    return found


def conflict_feedback(repo: Repo, *, start: Sha, head: Sha, integration: Sha, files: list[str], messages: list[str],
                      merged: Mapping[str, str]) -> str:
    """Why an attempt that started at START and ended at HEAD was sent back: whose merges it met, in which
    files, their changes to those files, and its own diff."""
    culprits = merged_meanwhile(repo, start=start, integration=integration, files=files, merged=merged)
    theirs = "".join(f"\n'{task_id}' ({', '.join(paths)}):\n{cut(diff_text(repo, parent, commit, paths))}\n"
                     for task_id, parent, commit, paths in culprits)
    who = ", ".join(f"'{c[0]}'" for c in culprits) if culprits else "other tasks"
    return (f"Your previous attempt conflicted with work merged meanwhile by {who}.\n"
            f"Conflicting files: {', '.join(files)}\n" + "".join(f"  {m}\n" for m in messages) +
            "This attempt starts from the current integration head, which contains their work. "
            "Redo your change on top of it.\n" +
            (f"\nTheir changes to those files:\n{theirs}" if theirs else "") +
            "\nYour previous diff:\n" + cut(diff_text(repo, start, head)))


def forecast_text(f: Forecast, head: str) -> str:
    """What an agent is told of a conflict its work is heading for."""
    where = ", ".join(f.paths)
    if not f.other:
        return (f"Heads-up: your changes so far conflict with work already merged into the integration branch "
                f"(now at {head}) in {where}. Bring it into your branch (`git merge {head}`) and resolve the "
                "conflict now, or your work will be sent back after the gate.")
    return (f"Heads-up: your changes so far conflict with what task '{f.other}' is changing right now, in {where}. "
            "Keep your change to those files as small as the task allows; whichever merges second must redo it.")


def cut(diff: str, limit: int = FEEDBACK_DIFF_LINES) -> str:
    lines = diff.splitlines()
    return "\n".join(lines[:limit]) + (f"\n[… {len(lines) - limit} more lines]" if len(lines) > limit else "")
