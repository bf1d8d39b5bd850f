"""A run's figures are a pure function of its rows and events: tested in-process, without a repository."""

from __future__ import annotations

from typing import Any

import pytest

from worktree_swarm.store.metrics import KINDS, Figures, combine, run_figures, wanted
from worktree_swarm.store.run_store import AttemptRow, TaskRow


def task(id: str, status: str) -> TaskRow:
    return TaskRow(id=id, position=0, status=status, attempts=0, branch=None, reason=None, summary=None,
                   merge_commit=None, worktree=None, cost_usd=0.0, updated=0.0)


def attempt(task_id: str, n: int, outcome: str, *, started: float = 0.0, finished: float | None = 10.0,
            cost: float = 0.0) -> AttemptRow:
    return AttemptRow(task_id=task_id, n=n, outcome=outcome, branch="b", start="s", head=None, started=started,
                      finished=finished, reason=None, gate=None, files=None, added=None, removed=None,
                      cost_usd=cost)


def ev(ts: float, kind: str, task: str | None = None, **data: Any) -> dict[str, Any]:
    return {"ts": ts, "kind": kind, **({"task": task} if task else {}), **data}


def figures(tasks: list[TaskRow], attempts: list[AttemptRow], events: list[dict[str, Any]] = [],  # noqa: B006
            state: str = "finished") -> dict[str, Any]:
    return run_figures(tasks, attempts, events, state=state, run="r1").data()


def test_a_run_whose_tasks_all_merged_first_time_is_clean() -> None:
    f = figures([task("a", "merged"), task("b", "merged")],
                [attempt("a", 1, "merged", cost=0.5), attempt("b", 1, "merged")])
    assert f["completed"] and f["clean"]
    assert f["first_try"] == 2 and f["attempts"] == 2 and f["attempts_per_merged_task"] == 1.0
    assert f["wasted"] == {"attempts": 0, "seconds": 0.0, "cost_usd": 0.0, "by_cause": {
        "conflict": 0, "gate": 0, "agent": 0, "timeout": 0, "no_op": 0, "ejected": 0, "error": 0}}
    assert f["held"] == {"tasks": 0, "holds": 0, "open": 0, "seconds": 0.0, "longest": None}
    assert f["forecast"] == {"attempts": 0, "came_true": 0, "did_not": 0, "unforecast": 0}


def test_every_cause_of_waste_is_counted_with_its_time_and_spend() -> None:
    outcomes = ["conflict", "gate-failed", "agent-failed", "timeout", "no-op", "ejected", "error"]
    attempts = [attempt("a", n, kind, started=100.0 * n, finished=100.0 * n + n, cost=0.25)
                for n, kind in enumerate(outcomes, 1)]
    f = figures([task("a", "merged")], [*attempts, attempt("a", 8, "merged", started=900, finished=950, cost=1.0)])
    assert f["wasted"]["by_cause"] == dict.fromkeys(["conflict", "gate", "agent", "timeout", "no_op", "ejected",
                                                     "error"], 1)
    assert f["wasted"]["attempts"] == 7
    assert f["wasted"]["seconds"] == sum(range(1, 8))   # the merged attempt's 50 s are not waste
    assert f["wasted"]["cost_usd"] == 1.75
    assert f["attempts_per_merged_task"] == 8.0
    assert f["completed"] and not f["clean"] and f["first_try"] == 0


def test_interrupted_attempts_are_counted_apart_and_spoil_nothing() -> None:
    f = figures([task("a", "merged")], [attempt("a", 1, "interrupted", started=0, finished=4, cost=0.1),
                                        attempt("a", 2, "merged")])
    assert f["interrupted"] == {"attempts": 1, "seconds": 4.0, "cost_usd": 0.1}
    assert f["wasted"]["attempts"] == 0
    assert f["attempts"] == 2 and f["attempts_per_merged_task"] == 1.0
    assert f["clean"] and f["first_try"] == 1


def test_rows_left_running_by_a_dead_driver_are_interrupted_and_a_live_runs_newest_is_in_flight() -> None:
    tasks = [task("a", "running"), task("b", "pending"), task("c", "merging")]
    # a#1 was left `running` by a crash; the resumed run is driving a#2 now. b's row is stale too:
    # its task is pending again. c passed its gate and waits for its merge.
    attempts = [attempt("a", 1, "running", finished=None), attempt("a", 2, "running", finished=None),
                attempt("b", 1, "running", finished=None), attempt("c", 1, "gated")]
    live = figures(tasks, attempts, state="running")
    assert live["in_flight"] == 2 and live["interrupted"]["attempts"] == 2
    assert live["interrupted"]["seconds"] == 0.0          # no end recorded: no time claimed
    dead = figures(tasks, attempts, state="interrupted")
    assert dead["in_flight"] == 0 and dead["interrupted"]["attempts"] == 4
    assert not dead["completed"] and dead["attempts_per_merged_task"] is None


def test_an_ejected_merge_is_waste_and_its_redo_counts_for_the_merged_task() -> None:
    tasks = [task("a", "merged"), task("b", "merged")]
    attempts = [attempt("a", 1, "ejected"), attempt("a", 2, "merged"), attempt("b", 1, "merged")]
    f = figures(tasks, attempts)
    assert f["wasted"]["by_cause"]["ejected"] == 1
    assert f["attempts_per_merged_task"] == 1.5 and f["first_try"] == 1
    assert f["completed"] and not f["clean"]


def test_a_retried_run_keeps_the_waste_of_its_first_round() -> None:
    tasks = [task("a", "merged"), task("b", "merged")]
    attempts = [attempt("a", 1, "merged"), *(attempt("b", n, "gate-failed") for n in (1, 2, 3)),
                attempt("b", 4, "merged")]
    events = [ev(1, "run-started"), ev(50, "failed", "b"), ev(51, "run-finished"), ev(90, "run-retried"),
              ev(91, "attempt-started", "b", attempt=4), ev(99, "run-finished")]
    f = figures(tasks, attempts, events)
    assert f["completed"] and not f["clean"]
    assert f["wasted"]["by_cause"]["gate"] == 3 and f["attempts_per_merged_task"] == 2.5


def test_a_failed_or_blocked_task_leaves_the_run_incomplete() -> None:
    f = figures([task("a", "merged"), task("b", "failed"), task("c", "blocked")],
                [attempt("a", 1, "merged"), attempt("b", 1, "agent-failed"), attempt("b", 2, "timeout")])
    assert not f["completed"] and not f["clean"]
    assert f["merged"] == 1 and f["tasks"] == 3
    assert f["attempts_per_merged_task"] == 1.0   # b's attempts are waste, not a merged task's
    assert f["wasted"]["attempts"] == 2
    empty = figures([], [])
    assert not empty["completed"] and not empty["clean"]


def test_a_hold_lasts_until_the_tasks_next_attempt_whatever_the_reasons_meanwhile() -> None:
    events = [ev(10, "held", "b", waiting_for="a", reason="both change x.py"),
              ev(12, "held", "b", waiting_for="c", reason="both change y.py"),
              ev(13, "attempt-started", "c", attempt=1),
              ev(15, "attempt-started", "b", attempt=1),
              ev(20, "held", "b", waiting_for="a", reason="retry waits"),
              ev(21.5, "attempt-started", "b", attempt=2),
              ev(30, "held", "d", waiting_for="a", reason="both change x.py"),
              ev(34, "blocked", "d", reason="spending limit")]
    tasks = [task(t, "merged") for t in "abcd"]
    held = figures(tasks, [], events)["held"]
    assert held == {"tasks": 2, "holds": 3, "open": 0, "seconds": 10.5, "longest": {"task": "b", "seconds": 6.5}}


def test_holds_end_when_the_run_stops_and_a_crash_ends_them_at_the_dead_drivers_last_event() -> None:
    tasks = [task("b", "pending"), task("c", "pending")]
    interrupted = [ev(10, "held", "b"), ev(13, "run-interrupted")]
    assert figures(tasks, [], interrupted)["held"]["seconds"] == 3.0
    crashed = [ev(10, "held", "b"), ev(11, "held", "c"), ev(12, "merged", "a"),
               ev(500, "run-resumed"), ev(501, "held", "b"), ev(503, "attempt-started", "b")]
    held = figures(tasks, [], crashed)["held"]
    assert held["seconds"] == 2 + 1 + 2 and held["holds"] == 3 and held["open"] == 0
    live = figures(tasks, [], [ev(10, "held", "b"), ev(14, "agent-activity", "a")], state="running")["held"]
    assert live["open"] == 1 and live["seconds"] == 4.0


def test_the_forecasts_record_came_true_did_not_and_unforecast() -> None:
    tasks = [task(t, "merged") for t in "abcde"]
    attempts = [attempt("a", 1, "conflict"), attempt("a", 2, "merged"),     # forecast, came true
                attempt("b", 1, "merged"),                                  # forecast, did not
                attempt("c", 1, "conflict"), attempt("c", 2, "merged"),     # unforecast
                attempt("d", 1, "gate-failed"), attempt("d", 2, "ejected"), attempt("d", 3, "merged"),
                attempt("e", 1, "merged")]
    events = [ev(1, "conflict-forecast", "a", attempt=1, other="b", files=["x"]),
              ev(2, "conflict-forecast", "a", attempt=1, other="integration head", files=["x"]),
              ev(3, "conflict-forecast", "b", attempt=1, other="a", files=["x"]),
              ev(4, "conflict-forecast-cleared", "b", attempt=1, other="a"),
              ev(5, "conflict-forecast", "d", attempt=1, other="e", files=["y"]),    # d#1 failed its gate: moot
              ev(6, "conflict-forecast", "d", attempt=2, other="e", files=["y"]),    # merged cleanly, then ejected
              ev(7, "conflict-forecast", "e", attempt="1", other="d")]               # not an attempt number
    assert figures(tasks, attempts, events)["forecast"] == {"attempts": 4, "came_true": 1, "did_not": 2,
                                                            "unforecast": 1}


def test_runs_add_up_and_the_clean_ratio_counts_finished_runs_only() -> None:
    clean = run_figures([task("a", "merged")], [attempt("a", 1, "merged")], [], state="finished", run="r1")
    held = [ev(1, "held", "a"), ev(4, "attempt-started", "a")]
    messy = run_figures([task("a", "merged"), task("b", "failed")],
                        [attempt("a", 1, "conflict"), attempt("a", 2, "merged"), attempt("b", 1, "no-op")], held,
                        state="finished", run="r2")
    going = run_figures([task("a", "running")], [attempt("a", 1, "running", finished=None)], [], state="running",
                        run="r3")
    total = combine([clean, messy, going]).total_data()
    assert (total["runs"], total["finished_runs"], total["clean_runs"], total["completed_runs"]) == (3, 2, 1, 1)
    assert total["clean_ratio"] == 0.5 and total["completed_ratio"] == 0.5
    assert total["tasks"] == 4 and total["merged"] == 2 and total["attempts"] == 5 and total["in_flight"] == 1
    assert total["attempts_per_merged_task"] == 1.5
    assert total["wasted"]["by_cause"]["conflict"] == 1 and total["wasted"]["by_cause"]["no_op"] == 1
    assert total["held"]["longest"] == {"run": "r2", "task": "a", "seconds": 3.0}
    assert combine([]).total_data()["clean_ratio"] is None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_log_line_of_each_kind_the_figures_read_is_wanted(kind: str) -> None:
    import json

    assert wanted(json.dumps({"ts": 1.0, "kind": kind, "task": "a"}))


def test_lines_of_other_kinds_and_quoted_kinds_are_skipped() -> None:
    import json

    assert not wanted(json.dumps({"ts": 1.0, "kind": "agent-activity", "text": "held"}))
    assert not wanted(json.dumps({"ts": 1.0, "kind": "agent-activity", "text": '"kind": "held"'}))
    assert not wanted(json.dumps({"ts": 1.0, "kind": "failed-over"}))


def test_figures_default_to_nothing() -> None:
    assert Figures().data()["wasted"]["attempts"] == 0


def test_the_pr_body_says_what_the_run_cost() -> None:
    import json

    from worktree_swarm.commands.pr import render_pr
    from worktree_swarm.store.run_store import RunRow
    from worktree_swarm.util.types import RunId

    plan = [{"id": t, "type": "general", "description": t, "dependencies": [], "files": []} for t in "abc"]
    run = RunRow(id=RunId("r1"), state="finished", base="f" * 40, base_ref="main", integration_branch="i",
                 plan=json.dumps(plan), options={}, created=0.0, updated=0.0, finished=1.0, cost_usd=2.0,
                 merge_gate=None)
    tasks = [task("a", "merged"), task("b", "merged"), task("c", "failed")]
    attempts = [attempt("a", 1, "interrupted", started=0, finished=3, cost=0.05), attempt("a", 2, "merged"),
                attempt("b", 1, "conflict", started=0, finished=90, cost=0.5), attempt("b", 2, "merged"),
                attempt("c", 1, "timeout", started=0, finished=30.5, cost=1.0)]
    events = [ev(1, "conflict-forecast", "b", attempt=1, other="a"), ev(5, "held", "b"),
              ev(20, "attempt-started", "b", attempt=2)]
    body = render_pr(run, tasks, attempts, events)
    section = body.split("## What it cost\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert section == [
        "- Attempts: 5 for 3 tasks, 1.50 per merged task; 1 of 3 merged at their first attempt. "
        "The run did not complete: 2 of 3 tasks merged.",
        "- Wasted attempts: 2 (1 conflict, 1 timed out) — 2m00s of attempt time, $1.50 of model spend.",
        "- Interrupted attempts (not the tasks' fault, not counted as waste): 1, 3.0s, $0.05.",
        "- Held back (waiting for an overlapping task): 1 task(s), 15.0s in all; longest `b`, 15.0s.",
        "- Conflict forecasts: 1 came true, 0 did not; 0 conflict(s) came unforecast."]
    assert "## What it cost" not in render_pr(run, tasks, [], [])
