"""What `wswarm status` reports: the run and its tasks, as data (SPEC §8)."""

from __future__ import annotations

from typing import Any

from worktree_swarm.gate.report import GateReport
from worktree_swarm.state import ACTIVE_STATUSES, RunStore


def status_data(store: RunStore) -> dict[str, Any]:
    """The SPEC §8 object. Tasks of a run nobody drives any more never claim to be running."""
    run = store.run()
    state = store.effective_state()
    tasks = []
    for t in store.tasks():
        status, reason = t.status, t.reason
        if state == "interrupted" and status in ACTIVE_STATUSES:
            status, reason = "pending", f"interrupted while {t.status} (attempt {t.attempts}); wswarm resume continues"
        tasks.append({"id": t.id, "status": status, "attempts": t.attempts, "branch": t.branch,
                      "reason": reason, "merge_commit": t.merge_commit, "worktree": t.worktree,
                      "cost_usd": round(t.cost_usd, 6)})
    merge_gate = None
    if run.merge_gate:
        merge_gate = GateReport.from_json(run.merge_gate).verdict
    return {"run": run.id, "state": state, "base": run.base, "integration_branch": run.integration_branch,
            "tasks": tasks, "cost_usd": round(run.cost_usd, 6), "merge_gate": merge_gate,
            "created": run.created, "finished": run.finished,
            "pr": str(store.dir / "pr.md") if (store.dir / "pr.md").exists() else None}

