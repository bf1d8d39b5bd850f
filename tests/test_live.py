"""The event log folded into the view (ui/feed.py) and the terminal grid drawn from it (ui/live.py),
on the logs of real runs: the fold must agree with the run's database, frame by frame cheaply."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from conftest import Repo, task, wait_for, wswarm
from live_run import WAITING_AGENT, LiveRun, need_tool
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.ui.feed import RECENT, EventTail, Feed
from worktree_swarm.ui.live import render


def fold(run_dir: Path, lines: int | None = None) -> Feed:
    """The run's whole log (or its first LINES events) folded in one go."""
    store = RunStore.open(run_dir)
    try:
        feed = Feed.for_store(store)
    finally:
        store.close()
    events = EventTail(run_dir / "events.jsonl").read()
    feed.apply_all(events[:lines] if lines is not None else events)
    return feed


def finished_run(repo: Repo, agent_script: Any, tmp_path: Path) -> LiveRun:
    """A run with a conflict (a and b write shared.txt), a failure (c fails its only attempt),
    a task blocked behind it (d), and a dependent that merges (e after a)."""
    # c declares its file: its retries need not wait for a and b, whose files are not known.
    tasks = [task("a", type="backend"), task("b"), task("c", files=["c.txt"]), task("d", dependencies=["c"]),
             task("e", dependencies=["a"], type="docs")]
    run = LiveRun(repo, agent_script(WAITING_AGENT), tasks, tmp_path / "go", shared="a,b",
                  extra=("--max-attempts", "2"))
    run.fail("c", 1)
    run.fail("c", 2)
    run.release("c")
    run.wait_event("failed", "c")
    run.release("a")
    run.wait_event("merged", "a")
    code, _, err = run.finish()
    assert code == 1, err
    return run


def test_the_fold_of_a_real_run_agrees_with_its_database(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    run = finished_run(repo, agent_script, tmp_path)
    feed = fold(run.dir)
    view = feed.view(live=False)
    status = wswarm(repo.path, "status", "--json").json()
    assert {t["id"]: t["status"] for t in view["tasks"]} == {t["id"]: t["status"] for t in status["tasks"]}
    assert {t["id"]: t["attempt"] for t in view["tasks"]} == {t["id"]: t["attempts"] for t in status["tasks"]}
    assert view["state"] == "finished" and view["progress"]["merged"] == 3 and view["progress"]["total"] == 5
    assert view["mission"] == {"active_agents": 0, "completed": 3, "total": 5, "files_modified": 4, "conflicts": 1}
    assert view["files"] == ["a.txt", "b.txt", "e.txt", "shared.txt"]
    # b wrote shared.txt after a merged it: the alert names the file and both tasks.
    [conflict] = view["conflicts"]
    assert (conflict["task"], conflict["attempt"], conflict["files"], conflict["with"]) == ("b", 1, ["shared.txt"], ["a"])
    assert [(a["kind"], a["task"]) for a in view["alerts"]] == [("failed", "c")]
    by_id = {t["id"]: t for t in view["tasks"]}
    assert by_id["d"]["reason"] == "depends on 'c', which failed"
    assert by_id["c"]["reason"].startswith("the agent exited with status 3")
    assert by_id["a"]["gate"].startswith("gate passed") and by_id["a"]["agent"] == "command"
    # Every agent slot is free at the end; together they merged what merged.
    assert all(a["task"] is None and a["status"] == "idle" for a in view["agents"])
    assert sum(a["completed"] for a in view["agents"]) == 3
    # The activity the agents printed is in the log, and so in the stream of recent events.
    kinds = [e["kind"] for e in view["recent"]]
    assert "agent-activity" in kinds and kinds[-1] == "run-finished"
    said = [e["text"] for e in run.events() if e["kind"] == "agent-activity" and e["task"] == "a"]
    assert said and all(text.startswith("a: ") for text in said) and said[-1] == "a: wrote a.txt"
    assert len(view["recent"]) <= RECENT
    ids = [e["id"] for e in view["recent"]]
    assert ids == sorted(ids) and ids[-1] == feed.count - 1


def test_a_log_cut_mid_run_reads_as_interrupted_when_nobody_drives_it(repo: Repo, agent_script: Any,
                                                                   tmp_path: Path) -> None:
    run = LiveRun(repo, agent_script(WAITING_AGENT), [task("a"), task("b")], tmp_path / "go")
    try:
        run.wait_event("agent-activity", "a")
        run.wait_event("agent-activity", "b")
        lines = len(run.events())
        live = fold(run.dir).view(live=True)
        assert {a["task"] for a in live["agents"] if a["task"]} == {"a", "b"}
        assert all(a["status"] == "running" and a["activity"] for a in live["agents"] if a["task"])
    finally:
        run.stop()
    cut = fold(run.dir, lines).view(live=False)
    assert cut["state"] == "interrupted"
    assert [t["status"] for t in cut["tasks"]] == ["pending", "pending"]
    assert all(t["reason"].startswith("interrupted while running") for t in cut["tasks"])


def test_the_tail_reads_only_what_is_new_and_keeps_line_numbers(tmp_path: Path) -> None:
    log = tmp_path / "events.jsonl"
    tail = EventTail(log)
    assert tail.read() == []                       # no log yet
    log.write_text('{"ts": 1, "kind": "a"}\n{"ts": 2, "ki')
    assert tail.read() == [(0, {"ts": 1, "kind": "a"})]
    assert tail.read() == []                       # the half-written line waits for its newline
    with open(log, "a") as f:
        f.write('nd": "b"}\n{broken by a crash\n{"ts": 3, "kind": "c"}\n')
    assert tail.read() == [(1, {"ts": 2, "kind": "b"}), (3, {"ts": 3, "kind": "c"})]
    assert tail.offset == log.stat().st_size


def _fifty_task_board(tmp_path: Path) -> tuple[Feed, list[dict[str, Any]]]:
    """50 tasks, 8 agents, several hundred events of the kinds a real run writes."""
    tasks = [task(f"t{i:02d}", dependencies=[f"t{i - 10:02d}"] if i >= 10 else []) for i in range(50)]
    feed = Feed(tasks, agents=8)
    ts = 1000.0
    events: list[dict[str, Any]] = [{"ts": ts, "kind": "run-started", "run": "r", "tasks": 50}]
    for i in range(40):
        tid = f"t{i:02d}"
        events += [{"ts": ts + i, "kind": "attempt-started", "task": tid, "attempt": 1, "agent": "command"},
                   *({"ts": ts + i + k / 10, "kind": "agent-activity", "task": tid, "attempt": 1, "text": f"step {k}"}
                     for k in range(8)),
                   {"ts": ts + i + 1, "kind": "gate-started", "task": tid, "attempt": 1, "files": [f"{tid}.py"]}]
        if i < 32:
            events.append({"ts": ts + i + 2, "kind": "merged", "task": tid, "attempt": 1, "files": [f"{tid}.py"]})
    return feed, events


def test_a_frame_of_fifty_tasks_is_cheap_and_fits_the_screen(tmp_path: Path) -> None:
    feed, events = _fifty_task_board(tmp_path)
    feed.apply_all(list(enumerate(events)))
    console = Console(width=120, height=30, force_terminal=True, record=True, color_system="truecolor")
    started = time.perf_counter()
    for _ in range(20):
        frame = render(feed.view(now=1100.0), height=console.height)
        console.print(frame)
    per_frame = (time.perf_counter() - started) / 20
    lines = console.export_text().splitlines()
    assert len(lines) // 20 <= console.height - 1          # never taller than the screen: no scrolling flicker
    text = "\n".join(lines[: len(lines) // 20])
    assert "32/50 merged" in text and "8 gating" in text
    assert "agent-8" in text and "t39" in text and "t39.py" in text
    assert per_frame < 0.05, f"{per_frame * 1000:.1f} ms per frame"


def test_the_static_board_lists_every_task(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    run = finished_run(repo, agent_script, tmp_path)
    res = wswarm(repo.path, "status", run.id)
    assert res.returncode == 0, res.stderr
    assert "3/5 merged" in res.stdout and "1 failed" in res.stdout and "1 blocked" in res.stdout
    for tid in "abcde":
        assert f"\n{tid} " in res.stdout
    assert "depends on 'c', which failed" in res.stdout
    assert "conflict: b (attempt 1) in shared.txt with a" in res.stdout


def test_the_grid_on_a_real_terminal(repo: Repo, agent_script: Any, tmp_path: Path) -> None:
    """`wswarm start` inside tmux: the agents' rows with their activity, then the final frame."""
    tmux = need_tool("tmux")
    socket = f"wswarm-test-{tmp_path.name}"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([task("alpha"), task("beta"), task("gamma", dependencies=["alpha"])]))
    go = tmp_path / "go"
    go.mkdir()
    agent = agent_script(WAITING_AGENT)
    done = tmp_path / "exit-code"
    script = tmp_path / "run.sh"
    script.write_text(f"cd {shlex.quote(str(repo.path))}\nexport GO_DIR={shlex.quote(str(go))}\n"
                      f"{shlex.quote(sys.executable)} -m worktree_swarm start --plan {shlex.quote(str(plan))} "
                      f"--agents 2 --agent-cmd {shlex.quote(agent)}\necho $? > {shlex.quote(str(done))}\nsleep 30\n")
    subprocess.run([tmux, "-L", socket, "new-session", "-d", "-x", "130", "-y", "30", "sh", str(script)], check=True)

    def screen() -> str:
        return subprocess.run([tmux, "-L", socket, "capture-pane", "-p"], capture_output=True, text=True).stdout

    def grid() -> str | None:
        text = screen()
        return text if "alpha: working, step" in text and "beta: working, step" in text else None

    try:
        text = wait_for(grid, what="the grid with both agents' activity")
        assert "agent-1" in text and "agent-2" in text and "0/3 merged" in text and "2 running" in text
        (go / "all").write_text("")
        wait_for(done.exists, what="the run's end")
        final = screen()
        assert done.read_text().strip() == "0"
        assert "finished" in final and "3/3 merged" in final
        assert final.count("0/3 merged") == 0         # frames redraw in place: no stale frame is left above
    finally:
        subprocess.run([tmux, "-L", socket, "kill-server"], capture_output=True)


def test_file_names_in_the_grid_are_text_not_markup() -> None:
    """Next.js routes (`app/[id]/page.tsx`) are common paths; rich must not read them as styles."""
    feed = Feed([task("a")], agents=1)
    feed.apply_all(list(enumerate([
        {"ts": 1.0, "kind": "run-started", "run": "r", "tasks": 1},
        {"ts": 2.0, "kind": "attempt-started", "task": "a", "attempt": 1, "agent": "command"},
        {"ts": 3.0, "kind": "agent-activity", "task": "a", "attempt": 1, "text": "Write app/[id]/page.tsx"},
        {"ts": 4.0, "kind": "agent-activity", "task": "a", "attempt": 1, "text": "Edit: docs/[/]notes.md"},
    ])))
    console = Console(width=160, height=30, record=True)
    console.print(render(feed.view(now=5.0), height=console.height))
    text = console.export_text()
    assert "app/[id]/page.tsx" in text and "docs/[/]notes.md" in text


def _forecast_feed() -> tuple[Feed, list[dict[str, Any]]]:
    """Two running attempts whose work so far collides in core.py, as the forecaster says it."""
    feed = Feed([task("left"), task("right")], agents=2)
    events: list[dict[str, Any]] = [
        {"ts": 1.0, "kind": "run-started", "run": "r", "tasks": 2},
        {"ts": 2.0, "kind": "attempt-started", "task": "left", "attempt": 1, "agent": "command"},
        {"ts": 2.0, "kind": "attempt-started", "task": "right", "attempt": 1, "agent": "command"},
        {"ts": 3.0, "kind": "conflict-forecast", "task": "left", "attempt": 1, "other": "right",
         "files": ["core.py"], "messages": ["CONFLICT (content): Merge conflict in core.py"], "head": "abc"},
        {"ts": 3.0, "kind": "conflict-forecast", "task": "right", "attempt": 1, "other": "left",
         "files": ["core.py"], "messages": [], "head": "abc"},
    ]
    feed.apply_all(list(enumerate(events)))
    return feed, events


def _standing(feed: Feed) -> list[tuple[str, int, str, list[str]]]:
    return [(f["task"], f["attempt"], f["other"], f["files"]) for f in feed.view(now=10.0)["forecasts"]]


def test_a_forecast_stands_until_it_is_cleared() -> None:
    feed, _ = _forecast_feed()
    assert _standing(feed) == [("left", 1, "right", ["core.py"]), ("right", 1, "left", ["core.py"])]
    assert feed.view(now=10.0)["conflicts"] == []             # a forecast is not a conflict
    # raised again about more paths: still one forecast, about those paths
    feed.apply({"ts": 4.0, "kind": "conflict-forecast", "task": "left", "attempt": 1, "other": "right",
                "files": ["core.py", "util.py"], "messages": [], "head": "abc"})
    assert _standing(feed)[0] == ("left", 1, "right", ["core.py", "util.py"])
    feed.apply({"ts": 5.0, "kind": "conflict-forecast-cleared", "task": "left", "attempt": 1, "other": "right"})
    assert _standing(feed) == [("right", 1, "left", ["core.py"])]
    feed.apply({"ts": 6.0, "kind": "conflict-forecast-cleared", "task": "right", "attempt": 1, "other": "left"})
    assert _standing(feed) == []


def test_a_forecast_ends_with_its_attempt() -> None:
    feed, _ = _forecast_feed()
    feed.apply({"ts": 4.0, "kind": "merged", "task": "left", "attempt": 1, "files": ["core.py"]})
    # left's attempt is over; right's forecast about left stands until the forecaster says otherwise
    assert _standing(feed) == [("right", 1, "left", ["core.py"])]
    feed.apply({"ts": 5.0, "kind": "conflict-forecast", "task": "right", "attempt": 1, "other": "integration head",
                "files": ["core.py"], "messages": [], "head": "def"})
    feed.apply({"ts": 6.0, "kind": "conflict", "task": "right", "attempt": 1, "files": ["core.py"]})
    assert _standing(feed) == [] and len(feed.view(now=10.0)["conflicts"]) == 1
    # a later attempt ends what was forecast for an earlier one, whatever came between
    feed.apply({"ts": 7.0, "kind": "attempt-started", "task": "right", "attempt": 2, "agent": "command"})
    feed.apply({"ts": 8.0, "kind": "conflict-forecast", "task": "right", "attempt": 2, "other": "integration head",
                "files": ["core.py"], "messages": [], "head": "def"})
    feed.apply({"ts": 8.5, "kind": "conflict-forecast", "task": "right", "attempt": 1, "other": "left",
                "files": ["core.py"], "messages": [], "head": "abc"})     # late word of attempt 1: not standing
    assert _standing(feed) == [("right", 2, "integration head", ["core.py"])]
    feed.apply({"ts": 9.0, "kind": "restarted", "task": "right", "attempt": 2, "other": "integration head",
                "files": ["core.py"]})
    assert _standing(feed) == []


def test_a_run_nobody_drives_has_no_standing_forecast() -> None:
    feed, events = _forecast_feed()
    assert len(feed.view(now=10.0, live=True)["forecasts"]) == 2
    assert feed.view(now=10.0, live=False)["forecasts"] == []           # it crashed: nothing runs
    feed.apply({"ts": 4.0, "kind": "run-interrupted"})
    feed.apply({"ts": 5.0, "kind": "run-resumed", "run": "r"})
    assert feed.view(now=10.0)["forecasts"] == []


def test_the_grid_shows_standing_forecasts_on_one_line() -> None:
    feed, _ = _forecast_feed()
    feed.apply({"ts": 4.0, "kind": "conflict-forecast", "task": "left", "attempt": 1, "other": "integration head",
                "files": ["api.py"], "messages": [], "head": "abc"})
    console = Console(width=160, height=30, record=True)
    console.print(render(feed.view(now=10.0), height=console.height))
    lines = [line.rstrip() for line in console.export_text().splitlines() if "forecast:" in line]
    # the pair left/right forecast both ways is one entry; the head's is another
    assert lines == ["◆ 2 conflicts forecast: left ↔ right in core.py · left ↔ integration head in api.py"]
    feed.apply({"ts": 5.0, "kind": "merged", "task": "left", "attempt": 1, "files": ["core.py"]})
    feed.apply({"ts": 6.0, "kind": "conflict-forecast-cleared", "task": "right", "attempt": 1, "other": "left"})
    console = Console(width=160, height=30, record=True)
    console.print(render(feed.view(now=10.0), height=console.height))
    assert "forecast:" not in console.export_text()
