"""The run's event log folded into the one view model every view draws: agents, tasks, progress,
conflicts (and the ones forecast while agents work), spend and the latest events.

The terminal grid, `status --watch` and the web dashboard all read events.jsonl through EventTail
and fold it with Feed; none of them keeps a truth of its own. Pure logic apart from EventTail's
reads, so it is tested on real runs' logs without a terminal or a browser.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worktree_swarm.ui.describe import describe

if TYPE_CHECKING:
    from worktree_swarm.store.run_store import RunStore

RECENT = 50
ACTIVE = ("running", "gating", "merging")
SETTLED = ("merged", "failed", "blocked")
# Outcome events an attempt ends with before the task is re-queued or fails (swarm.py _settle).
_ATTEMPT_OVER = ("gate-failed", "agent-failed", "timeout", "no-op", "error", "conflict")
# Events after which an attempt runs no more: a forecast about its work so far no longer stands.
_FORECAST_ENDS = frozenset({*_ATTEMPT_OVER, "merged", "restarted"})
# Model-backed agents report tool uses as "Write src/app.py", "Edit: src/x.py" (agents/base.py).
_WRITES = re.compile(r"^(?:Write|Edit|MultiEdit|NotebookEdit|write_file|edit_file|create_file|str_replace)"
                     r"\b[:\s(]+['\"]?([^\s'\",)]+)")


class EventTail:
    """Reads events.jsonl incrementally: each call returns only the lines completed since the last.

    An event's id is its line number (0-based), stable across readers; a line cut short by a crash
    keeps its number and is skipped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.next_id = 0

    def read(self) -> list[tuple[int, dict[str, Any]]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []   # a line still being written: wait for its newline
        self.offset += end + 1
        out: list[tuple[int, dict[str, Any]]] = []
        for raw in data[:end].split(b"\n"):
            number = self.next_id
            self.next_id += 1
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if isinstance(event, dict) and "kind" in event:
                out.append((number, event))
        return out


@dataclass
class TaskView:
    id: str
    type: str
    description: str
    dependencies: list[str]
    status: str = "pending"
    attempt: int = 0
    agent: str | None = None          # the backend (command, claude, …) of the latest attempt
    worker: str | None = None         # the worker running the latest attempt (None: the integrator's machine)
    slot: int | None = None           # the agent slot running it now
    started: float | None = None      # the latest attempt's start
    ended: float | None = None        # … and end (None while it runs)
    activity: str = ""
    files: list[str] = field(default_factory=list)
    reason: str | None = None
    gate: str | None = None           # the latest gate summary line
    commit: str | None = None
    cost_usd: float = 0.0
    merged_at: float | None = None
    session_id: str | None = None     # the Claude Code session of the latest attempt that had one


@dataclass
class AgentSlot:
    """One of the run's --agents places: the tasks it ran, one after the other."""

    id: str
    task: str | None = None
    completed: int = 0
    last_kind: str | None = None
    last_type: str | None = None


class Feed:
    """Folds events, in log order, into the view model."""

    def __init__(self, tasks: list[dict[str, Any]], *, agents: int = 1, title: str = "") -> None:
        self.tasks = {str(t["id"]): TaskView(id=str(t["id"]), type=str(t.get("type", "")),
                                             description=str(t.get("description", "")),
                                             dependencies=[str(d) for d in t.get("dependencies", [])])
                      for t in tasks}
        self.slots = [AgentSlot(f"agent-{i + 1}") for i in range(max(1, agents))]
        self.title = title
        self.run: str | None = None
        self.state = "pending"
        self.started: float | None = None       # the first run-started
        self.drive_started: float | None = None  # the latest start or resume: the ETA's clock
        self.merged_in_drive = 0
        self.finished: float | None = None
        self.merge_gate: str | None = None
        self.waiting: str | None = None          # why no new attempt starts right now (machine limits)
        self.conflicts: list[dict[str, Any]] = []
        # Standing conflict forecasts by (task, attempt, other), in the order they were raised.
        self.forecasts: dict[tuple[str, int, str], dict[str, Any]] = {}
        self.alerts: list[dict[str, Any]] = []   # ejections and failures, newest last
        self.cost_usd = 0.0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_by_agent: dict[str, float] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.count = 0
        self.last_ts: float | None = None

    @classmethod
    def for_store(cls, store: RunStore) -> Feed:
        """A feed for a RunStore's run: its plan and agent count come from the run's row."""
        row = store.run()
        return cls(json.loads(row.plan), agents=int(row.options.get("agents") or 1),
                   title=str(row.options.get("title") or ""))

    # -- folding -------------------------------------------------------------------------------

    def apply_all(self, events: list[tuple[int, dict[str, Any]]]) -> None:
        for number, event in events:
            self.apply(event, number)

    def apply(self, event: dict[str, Any], number: int | None = None) -> None:
        kind = str(event.get("kind"))
        ts = float(event.get("ts") or 0.0)
        self.count += 1
        self.last_ts = ts
        task = self.tasks.get(str(event.get("task"))) if "task" in event else None
        handler = getattr(self, "_on_" + kind.replace("-", "_"), None)
        if kind in _FORECAST_ENDS and task is not None:
            self._forecasts_end(task.id, event.get("attempt"))
        if handler is not None:
            handler(event, ts, task)
        elif kind.startswith("merge-gate-"):
            # started, passed, failed, unverified: the merge-result gate's latest word
            self.merge_gate = "running" if kind == "merge-gate-started" else kind.removeprefix("merge-gate-")
        elif task is not None and kind in _ATTEMPT_OVER:
            self._attempt_over(event, ts, task)
        self.recent.append({"id": self.count - 1 if number is None else number, "ts": ts, "kind": kind,
                            "task": event.get("task"), "agent": event.get("agent") or (task.agent if task else None),
                            "text": describe(event)})

    def _on_run_started(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        self.run = str(e.get("run") or "") or self.run
        self.state, self.started, self.drive_started, self.merged_in_drive = "running", ts, ts, 0

    def _on_run_resumed(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        self.run = str(e.get("run") or "") or self.run
        self.state, self.drive_started, self.merged_in_drive, self.finished = "running", ts, 0, None
        self._stop_all("interrupted; will start again")
        self.forecasts.clear()

    def _on_run_interrupted(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        self.state = "interrupted"
        self._stop_all("interrupted; wswarm resume continues")
        self.forecasts.clear()

    def _on_run_finished(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        self.state, self.finished = "finished", ts
        self.forecasts.clear()       # no attempt runs any more

    def _on_attempt_started(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is None:
            return
        self._free(task)
        # A task runs one attempt at a time: what was forecast for its earlier ones is over.
        self._forecasts_end(task.id, None)
        task.status, task.attempt, task.started, task.ended = "running", int(e.get("attempt") or 0), ts, None
        task.activity, task.files, task.reason, task.gate = "", [], None, None
        task.agent = e.get("agent") or task.agent
        task.worker = None
        slot = next((s for s in self.slots if s.task is None), None)
        if slot is None:  # more at once than the run's --agents (a resume with another count)
            slot = AgentSlot(f"agent-{len(self.slots) + 1}")
            self.slots.append(slot)
        slot.task, slot.last_type, slot.last_kind = task.id, task.type, task.agent
        task.slot = self.slots.index(slot)

    def _on_attempt_assigned(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None and not e.get("local"):
            task.worker = str(e.get("worker") or "") or None

    def _on_agent_started(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None:
            task.agent = str(e.get("agent") or task.agent or "")
            if task.slot is not None:
                self.slots[task.slot].last_kind = task.agent

    def _on_agent_activity(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is None or task.status not in ACTIVE:
            return
        task.activity = str(e.get("text") or "")
        touched = _WRITES.match(task.activity)
        if touched and touched.group(1) not in task.files:
            task.files.append(touched.group(1))

    def _on_agent_finished(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        cost = float(e.get("cost_usd") or 0.0)
        self.cost_usd += cost
        self.input_tokens += int(e.get("input_tokens") or 0)
        self.output_tokens += int(e.get("output_tokens") or 0)
        agent = str(e.get("agent") or "agent")
        if cost:
            self.cost_by_agent[agent] = self.cost_by_agent.get(agent, 0.0) + cost
        if task is not None:
            task.cost_usd += cost
            task.session_id = str(e["session_id"]) if e.get("session_id") else task.session_id
            if not e.get("ok") and e.get("error"):
                task.activity = str(e["error"])

    def _on_gate_started(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None:
            task.status = "gating"
            task.activity = "gate running"
            if e.get("files"):
                task.files = [str(f) for f in e["files"]]

    def _on_merge_recovered(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None:
            task.status = "merging"

    def _on_merged(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is None:
            return
        slot = self._free(task)
        if slot is not None:
            slot.completed += 1
        task.status, task.ended, task.merged_at, task.reason = "merged", ts, ts, None
        task.commit = e.get("commit")
        task.files = [str(f) for f in e.get("files") or task.files]
        task.gate = e.get("gate") or task.gate
        task.activity = ""
        if not e.get("recovered"):
            self.merged_in_drive += 1

    def _on_conflict(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is None:
            return
        started = task.started or 0.0
        files = [str(f) for f in e.get("files") or []]
        # Whoever merged a file since this attempt started made the integration head it conflicts with.
        others = sorted({t.id for t in self.tasks.values() if t.id != task.id and t.merged_at is not None
                         and t.merged_at >= started and set(t.files) & set(files)})
        self.conflicts.append({"ts": ts, "task": task.id, "attempt": task.attempt, "files": files, "with": others})
        self._attempt_over(e, ts, task)

    def _on_conflict_forecast(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is None or task.status not in ACTIVE or int(e.get("attempt") or 0) != task.attempt:
            return    # late news of an attempt already over (the log is in order, but be safe)
        other = str(e.get("other") or "integration head")
        files = [str(f) for f in e.get("files") or []]
        key = (task.id, task.attempt, other)
        standing = self.forecasts.get(key)
        if standing is not None:      # raised again with other paths: the same forecast, now about these
            standing["files"] = files
            return
        self.forecasts[key] = {"ts": ts, "task": task.id, "attempt": task.attempt, "other": other,
                               "files": files, "head": e.get("head")}

    def _on_conflict_forecast_cleared(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None:
            self.forecasts.pop((task.id, int(e.get("attempt") or 0), str(e.get("other") or "integration head")), None)

    def _forecasts_end(self, task_id: str, attempt: Any) -> None:
        """Drop TASK_ID's standing forecasts: those of ATTEMPT, or all of them when ATTEMPT is None."""
        for key in [k for k in self.forecasts if k[0] == task_id and (attempt is None or k[1] == attempt)]:
            del self.forecasts[key]

    def _on_requeued(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None:
            self._free(task)
            task.status, task.reason = "pending", "re-queued" + (f": {e['reason']}" if e.get("reason") else "")

    def _on_failed(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None:
            self._free(task)
            task.status, task.reason, task.ended = "failed", e.get("reason"), task.ended or ts
            self.alerts.append({"ts": ts, "task": task.id, "kind": "failed", "text": str(e.get("reason") or ""),
                                "session_id": task.session_id})

    def _on_blocked(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None:
            task.status, task.reason = "blocked", e.get("reason")

    def _on_ejected(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        if task is not None:
            task.status, task.merged_at, task.commit, task.reason = "pending", None, None, e.get("reason")
            self.alerts.append({"ts": ts, "task": task.id, "kind": "ejected", "text": str(e.get("reason") or "")})

    def _on_planned(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        # The planner's spend belongs to the run, not to a task.
        self._on_agent_finished({**e, "agent": "planner"}, ts, None)

    def _on_shared_state_changed(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        self.alerts.append({"ts": ts, "task": None, "kind": "shared git state changed", "text": str(e.get("detail") or "")})

    def _on_waiting_for_resources(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        self.waiting = str(e.get("reason") or "waiting for resources")

    def _on_resources_available(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        self.waiting = None

    def _on_spending_limit(self, e: dict[str, Any], ts: float, task: TaskView | None) -> None:
        self.alerts.append({"ts": ts, "task": None, "kind": "spending-limit", "text": describe(e)})

    def _attempt_over(self, e: dict[str, Any], ts: float, task: TaskView) -> None:
        self._free(task)
        task.ended, task.reason = ts, e.get("reason") or task.reason
        if e.get("gate"):
            task.gate = str(e["gate"])
        elif str(e.get("kind")) == "gate-failed":
            task.gate = str(e.get("reason") or "")

    def _free(self, task: TaskView) -> AgentSlot | None:
        if task.slot is None:
            return None
        slot = self.slots[task.slot]
        slot.task, task.slot = None, None
        return slot

    def _stop_all(self, reason: str) -> None:
        for task in self.tasks.values():
            if task.status in ACTIVE:
                self._free(task)
                task.status, task.reason, task.activity = "pending", reason, ""

    # -- the view ------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        out = {status: 0 for status in ("pending", *ACTIVE, *SETTLED)}
        for task in self.tasks.values():
            out[task.status] = out.get(task.status, 0) + 1
        return out

    def eta(self, now: float) -> float | None:
        """Seconds left at this drive's pace so far; None until a task merged in it."""
        counts = self.counts()
        left = len(self.tasks) - counts["merged"] - counts["failed"] - counts["blocked"]
        if self.state != "running" or self.drive_started is None or not self.merged_in_drive or not left:
            return None if left else 0.0
        return left * (now - self.drive_started) / self.merged_in_drive

    def view(self, *, now: float | None = None, live: bool = True) -> dict[str, Any]:
        """The view model as plain JSON-ready data. LIVE is whether some process drives the run: a
        run that says running without one was interrupted (a crash writes no event)."""
        now = time.time() if now is None else now
        state = self.state
        tasks = [asdict(t) for t in self.tasks.values()]
        if state == "running" and not live:
            state = "interrupted"
            for t in tasks:
                if t["status"] in ACTIVE:
                    t.update(status="pending", reason=f"interrupted while {t['status']}; wswarm resume continues",
                             slot=None, activity="")
        for t in tasks:
            t["elapsed"] = None if t["started"] is None else (t["ended"] or now) - t["started"]
        by_id = {t["id"]: t for t in tasks}
        agents = []
        for i, slot in enumerate(self.slots):
            current = by_id.get(slot.task) if slot.task else None
            if current is not None and current["slot"] != i:
                current = None
            agents.append({"id": slot.id, "task": current["id"] if current else None,
                           "status": current["status"] if current else "idle",
                           "type": (current or {}).get("type") or slot.last_type,
                           "agent": (current or {}).get("agent") or slot.last_kind,
                           "worker": current["worker"] if current else None,
                           "description": current["description"] if current else "",
                           "attempt": current["attempt"] if current else None,
                           "elapsed": current["elapsed"] if current else None,
                           "activity": current["activity"] if current else "",
                           "files": current["files"] if current else [],
                           "progress": {"running": 1, "gating": 2, "merging": 3}.get(current["status"], 0)
                           if current else 0,
                           "completed": slot.completed})
        counts = {status: sum(t["status"] == status for t in tasks) for status in ("pending", *ACTIVE, *SETTLED)}
        files = sorted({f for t in tasks if t["status"] == "merged" or t["status"] in ACTIVE for f in t["files"]})
        return {
            "run": self.run, "title": self.title, "state": state, "started": self.started, "finished": self.finished,
            "now": now, "events": self.count, "merge_gate": self.merge_gate,
            "waiting": self.waiting if state == "running" else None,
            "progress": {"total": len(tasks), "merged": counts["merged"], "counts": counts,
                         "eta": self.eta(now) if state == "running" else None,
                         "elapsed": None if self.started is None else (self.finished or now) - self.started},
            "mission": {"active_agents": sum(counts[s] for s in ACTIVE), "completed": counts["merged"],
                        "total": len(tasks), "files_modified": len(files), "conflicts": len(self.conflicts)},
            "agents": agents, "tasks": tasks, "files": files,
            "conflicts": self.conflicts[-20:], "alerts": self.alerts[-20:],
            # Standing forecasts; a run nobody drives has no running attempt for them to be about.
            "forecasts": [dict(f) for f in self.forecasts.values()] if state == "running" else [],
            "spend": {"cost_usd": round(self.cost_usd, 6), "input_tokens": self.input_tokens,
                      "output_tokens": self.output_tokens,
                      "by_agent": {k: round(v, 6) for k, v in self.cost_by_agent.items()},
                      "by_task": {t["id"]: round(t["cost_usd"], 6) for t in tasks if t["cost_usd"]}},
            "recent": list(self.recent),
        }
