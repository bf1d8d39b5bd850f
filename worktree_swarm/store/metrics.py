"""What a run cost: a pure function of its task rows, attempt rows and events.

Shown by `status --json` (`figures`), the PR body ("What it cost"), the dashboard and `wswarm
stats`. Nothing here reads a file or a database, and nothing heavy is imported: `status --json`
is answered without typer, rich or pygit2.

Definitions (docs/runs.md says the same to users):
- An attempt is **wasted** when it ended in anything but a merge that stayed: a conflict, a failed
  gate, a failed agent, a timeout, a no-op, an ejected merge, an error. An **interrupted** attempt
  (Ctrl-C, a crash) is not the task's fault and is counted apart. An attempt still running in a
  run that is being driven is neither; a `running` or `gated` row left behind by a process that
  died is interrupted.
- A task merged **first time** when it merged and none of its attempts was wasted.
- A run **completed** when every task merged, and completed **cleanly** when, besides, no attempt
  was wasted: every task merged at its first attempt, not counting interrupted ones.
- A task is **held** from its `held` event until its next `attempt-started` (or it is blocked, or
  the run stops); further `held` events meanwhile only change the reason.
- A **conflict forecast** is judged per attempt: it came true when that attempt's merge then
  conflicted, and did not when the attempt merged (an ejected merge merged cleanly first). A
  conflict of an attempt that had no forecast came unforecast.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worktree_swarm.store.run_store import AttemptRow, TaskRow

# How an attempt ended -> the cause its waste is counted under (every key is always reported).
WASTE_CAUSES: dict[str, str] = {"conflict": "conflict", "gate-failed": "gate", "agent-failed": "agent",
                                "timeout": "timeout", "no-op": "no_op", "ejected": "ejected", "error": "error"}
_UNSETTLED = ("running", "gated")
_ACTIVE = ("running", "gating", "merging")   # task statuses of a task in flight
# Events after which no task is held any more: the run stopped, finished, or a new driver took over.
_STOPS = ("run-interrupted", "run-stopped", "run-finished")
_RESTARTS = ("run-resumed", "run-retried")
_HOLD_ENDS = ("attempt-started", "blocked", "failed")
# Every event kind the figures read; a reader may skip the rest of a long log unparsed.
KINDS = frozenset({"conflict-forecast", "held", *_HOLD_ENDS, *_STOPS, *_RESTARTS})
# One search a line: ~4x faster than a substring test per kind, on a log that is mostly agent activity.
_WANTED = re.compile('"kind": "(?:' + "|".join(re.escape(kind) for kind in sorted(KINDS)) + ')"')


def wanted(line: str) -> bool:
    """Whether an events.jsonl LINE may be one the figures read (a cheap test before parsing it)."""
    return _WANTED.search(line) is not None


@dataclass
class Figures:
    """A run's figures, or the sum of several runs' (`combine`)."""

    runs: int = 1
    tasks: int = 0
    merged: int = 0
    first_try: int = 0                 # tasks merged with no wasted attempt
    attempts: int = 0                  # attempts started, interrupted ones included
    merged_task_attempts: int = 0      # attempts of the merged tasks, interrupted ones not counted
    in_flight: int = 0
    wasted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(WASTE_CAUSES.values(), 0))
    wasted_seconds: float = 0.0
    wasted_cost_usd: float = 0.0
    interrupted: int = 0
    interrupted_seconds: float = 0.0
    interrupted_cost_usd: float = 0.0
    held: dict[tuple[str, str], float] = field(default_factory=dict)   # (run, task) -> seconds held in all
    holds: int = 0
    held_open: int = 0                 # holds still going when the log ends (a live run)
    forecast: int = 0                  # attempts that had a conflict forecast
    forecast_true: int = 0
    forecast_false: int = 0
    unforecast: int = 0
    completed_runs: int = 0
    clean_runs: int = 0
    finished_runs: int = 0             # runs whose state is `finished`: the ratios' denominator

    @property
    def wasted_attempts(self) -> int:
        return sum(self.wasted.values())

    @property
    def completed(self) -> bool:
        return self.tasks > 0 and self.merged == self.tasks

    @property
    def clean(self) -> bool:
        return self.completed and self.wasted_attempts == 0

    @property
    def per_merged_task(self) -> float | None:
        return round(self.merged_task_attempts / self.merged, 2) if self.merged else None

    def data(self) -> dict[str, Any]:
        """One run's figures as `status --json` prints them."""
        return {"tasks": self.tasks, "merged": self.merged, "completed": self.completed, "clean": self.clean,
                **self._common()}

    def total_data(self) -> dict[str, Any]:
        """The sum of several runs, as `stats --json` prints it."""
        return {"runs": self.runs, "finished_runs": self.finished_runs, "completed_runs": self.completed_runs,
                "clean_runs": self.clean_runs, "clean_ratio": ratio(self.clean_runs, self.finished_runs),
                "completed_ratio": ratio(self.completed_runs, self.finished_runs),
                "tasks": self.tasks, "merged": self.merged, **self._common(total=True)}

    def _common(self, *, total: bool = False) -> dict[str, Any]:
        longest = max(self.held.items(), key=lambda kv: (kv[1], kv[0]), default=None)
        held_longest: dict[str, Any] | None = None
        if longest is not None:
            (run, task), seconds = longest
            held_longest = {"run": run, "task": task} if total else {"task": task}
            held_longest["seconds"] = round(seconds, 3)
        return {
            "first_try": self.first_try,
            "attempts": self.attempts,
            "attempts_per_merged_task": self.per_merged_task,
            "in_flight": self.in_flight,
            "wasted": {"attempts": self.wasted_attempts, "by_cause": dict(self.wasted),
                       "seconds": round(self.wasted_seconds, 3), "cost_usd": round(self.wasted_cost_usd, 6)},
            "interrupted": {"attempts": self.interrupted, "seconds": round(self.interrupted_seconds, 3),
                            "cost_usd": round(self.interrupted_cost_usd, 6)},
            "held": {"tasks": len(self.held), "holds": self.holds, "open": self.held_open,
                     "seconds": round(float(sum(self.held.values())), 3),
                     "longest": held_longest},
            "forecast": {"attempts": self.forecast, "came_true": self.forecast_true,
                         "did_not": self.forecast_false, "unforecast": self.unforecast},
        }


def ratio(part: int, whole: int) -> float | None:
    """PART / WHOLE to four places, or None when there is no whole."""
    return round(part / whole, 4) if whole else None


def _seconds(a: AttemptRow) -> float:
    return max(0.0, a.finished - a.started) if a.finished is not None else 0.0


def run_figures(tasks: Sequence[TaskRow], attempts: Sequence[AttemptRow], events: Iterable[Mapping[str, Any]],
                *, state: str, run: str = "") -> Figures:
    """The figures of run RUN from its rows and events; STATE is its effective state (`running`
    only while an orchestrator drives it: then the newest unsettled attempt of a task in flight is
    running, and any other unsettled attempt was cut short by a driver that died)."""
    f = Figures(tasks=len(tasks), merged=sum(t.status == "merged" for t in tasks))
    active = {t.id for t in tasks if t.status in _ACTIVE}
    newest: dict[str, int] = {}
    for a in attempts:
        newest[a.task_id] = max(newest.get(a.task_id, 0), a.n)
    merged_tasks = {t.id for t in tasks if t.status == "merged"}
    wasted_tasks: set[str] = set()
    outcome: dict[tuple[str, int], str] = {}
    for a in attempts:
        f.attempts += 1
        kind = a.outcome
        if kind in _UNSETTLED:
            if state == "running" and a.n == newest[a.task_id] and a.task_id in active:
                f.in_flight += 1
                continue
            kind = "interrupted"
        outcome[(a.task_id, a.n)] = kind
        if kind == "interrupted":
            f.interrupted += 1
            f.interrupted_seconds += _seconds(a)
            f.interrupted_cost_usd += a.cost_usd
            continue
        if a.task_id in merged_tasks:
            f.merged_task_attempts += 1
        cause = WASTE_CAUSES.get(kind)
        if cause is None:     # merged (or an outcome this version does not know: not called waste)
            continue
        f.wasted[cause] += 1
        f.wasted_seconds += _seconds(a)
        f.wasted_cost_usd += a.cost_usd
        wasted_tasks.add(a.task_id)
    f.first_try = len(merged_tasks - wasted_tasks)
    forecast = _held_and_forecasts(f, events, run)
    f.forecast = len(forecast)
    f.forecast_true = sum(outcome.get(key) == "conflict" for key in forecast)
    f.forecast_false = sum(outcome.get(key) in ("merged", "ejected") for key in forecast)
    f.unforecast = sum(kind == "conflict" and key not in forecast for key, kind in outcome.items())
    f.finished_runs = int(state == "finished")
    f.completed_runs = int(state == "finished" and f.completed)
    f.clean_runs = int(state == "finished" and f.clean)
    return f


def _held_and_forecasts(f: Figures, events: Iterable[Mapping[str, Any]], run: str) -> set[tuple[str, int]]:
    """Fold EVENTS: the holds into F; returns the attempts that had a conflict forecast."""
    forecast: set[tuple[str, int]] = set()
    since: dict[str, float] = {}   # task -> when its current hold began
    last: float | None = None

    def close(task: str, at: float | None) -> None:
        began = since.pop(task)
        f.held[(run, task)] = f.held.get((run, task), 0.0) + (max(0.0, at - began) if at is not None else 0.0)

    for e in events:
        kind, task, ts = e.get("kind"), e.get("task"), e.get("ts")
        at = float(ts) if isinstance(ts, (int, float)) else last
        if kind == "conflict-forecast" and isinstance(task, str) and isinstance(e.get("attempt"), int):
            forecast.add((task, int(e["attempt"])))
        elif kind == "held" and isinstance(task, str) and at is not None and task not in since:
            since[task] = at
            f.holds += 1
        elif kind in _HOLD_ENDS and isinstance(task, str) and task in since:
            close(task, at)
        elif kind in _STOPS:
            for held in list(since):
                close(held, at)
        elif kind in _RESTARTS:
            # After a crash nothing said the run stopped: the holds end with the dead driver's last word.
            for held in list(since):
                close(held, last)
        last = at if at is not None else last
    f.held_open = len(since)
    for held in list(since):
        close(held, last)
    return forecast


def combine(figures: Iterable[Figures]) -> Figures:
    """The sum of several runs' figures (made with their `run`, which keeps their tasks apart)."""
    total = Figures(runs=0)
    for f in figures:
        total.runs += f.runs
        for name in ("tasks", "merged", "first_try", "attempts", "merged_task_attempts", "in_flight",
                     "wasted_seconds", "wasted_cost_usd", "interrupted", "interrupted_seconds",
                     "interrupted_cost_usd", "holds", "held_open", "forecast", "forecast_true",
                     "forecast_false", "unforecast", "completed_runs", "clean_runs", "finished_runs"):
            setattr(total, name, getattr(total, name) + getattr(f, name))
        for cause, n in f.wasted.items():
            total.wasted[cause] = total.wasted.get(cause, 0) + n
        total.held.update(f.held)
    return total
