"""The terminal views of a run: a live grid of agents (during start/resume and `status --watch`),
the static board of `status`, and plain timestamped lines where there is no terminal.

Every frame is drawn from the run's event log folded by ui.feed; a frame reads only the events
written since the previous one, so 50 tasks cost no more per frame than 5.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from worktree_swarm.store.run_store import RunStore
from worktree_swarm.commands.status import status_data
from worktree_swarm.ui.describe import details
from worktree_swarm.ui.feed import EventTail, Feed
from worktree_swarm.store import layout
from worktree_swarm.util.textsafe import terminal_text

COLOURS = {"pending": "dim", "running": "cyan", "gating": "yellow", "merging": "magenta",
           "merged": "green", "failed": "red", "blocked": "red dim", "idle": "dim"}
REFRESH_PER_SECOND = 4
# How long a watcher waits for a run whose orchestrator has not taken its lock yet.
_START_GRACE = 5.0


class Board:
    """A run's event log, read incrementally and folded; the source of every terminal frame."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.tail = EventTail(store.dir / layout.EVENTS)
        self.feed = Feed.for_store(store)
        self.opened = time.monotonic()

    def poll(self) -> list[dict[str, Any]]:
        events = self.tail.read()
        self.feed.apply_all(events)
        return [e for _, e in events]

    def view(self) -> dict[str, Any]:
        return self.feed.view(live=self.store.is_live())

    def over(self) -> bool:
        """The run finished, was interrupted, or nobody drives it (after a grace for one starting)."""
        if self.feed.state in ("finished", "interrupted"):
            return True
        if self.store.is_live():
            return False
        return self.feed.state == "running" or time.monotonic() - self.opened > _START_GRACE

    def frame(self, console: Console) -> RenderableType:
        self.poll()
        return render(self.view(), height=console.height)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _header(view: dict[str, Any]) -> list[RenderableType]:
    p, m, spend = view["progress"], view["mission"], view["spend"]
    state = view["state"]
    title = f" · {view['title']}" if view.get("title") else ""
    head = Text.assemble((f"wswarm run {view['run'] or '?'}{title}", "bold"), " · ",
                         (state, {"running": "cyan", "finished": "green", "interrupted": "yellow"}.get(state, "")),
                         f" · {clock(p['elapsed'])}" if p["elapsed"] is not None else "", no_wrap=True,
                         overflow="ellipsis")
    counts = p["counts"]
    line = Table.grid(padding=(0, 1))
    line.add_column(width=30)
    line.add_column()
    parts = [f"{p['merged']}/{p['total']} merged"]
    for status in ("running", "gating", "merging", "failed", "blocked"):
        if counts.get(status):
            parts.append(f"{counts[status]} {status}")
    if p["eta"] is not None and state == "running":
        parts.append(f"ETA {clock(p['eta'])}" if p["eta"] else "finishing")
    parts.append(f"{m['conflicts']} conflict{'s' if m['conflicts'] != 1 else ''}")
    parts.append(f"${spend['cost_usd']:.4f}" + (f" ({spend['input_tokens']:,} in / {spend['output_tokens']:,} out)"
                                                if spend["input_tokens"] or spend["output_tokens"] else ""))
    if view.get("merge_gate"):
        parts.append(f"merge gate {view['merge_gate']}")
    if view.get("waiting"):
        parts.append(f"waiting: {view['waiting']}")
    line.add_row(ProgressBar(total=max(1, p["total"]), completed=p["merged"], width=30,
                             complete_style="green", finished_style="green"),
                 Text(" · ".join(parts), no_wrap=True, overflow="ellipsis"))
    return [head, line]


def _agents(view: dict[str, Any], rows: int) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold dim")
    for col, kw in (("agent", {"no_wrap": True}), ("task", {"no_wrap": True, "max_width": 28}),
                    ("status", {"no_wrap": True}), ("try", {"justify": "right"}), ("time", {"justify": "right"}),
                    ("files", {"no_wrap": True, "max_width": 30}), ("activity", {"ratio": 1, "no_wrap": True})):
        table.add_column(col, overflow="ellipsis", **kw)
    agents = view["agents"]
    if len(agents) > rows:
        agents = [a for a in agents if a["task"]][:rows]
    for a in agents:
        files = a["files"]
        shown = ", ".join(files[:2]) + (f" +{len(files) - 2}" if len(files) > 2 else "")
        table.add_row(a["id"], a["task"] or "", Text(a["status"], style=COLOURS.get(a["status"], "")),
                      str(a["attempt"] or ""), clock(a["elapsed"]), Text(shown, no_wrap=True, overflow="ellipsis"),
                      Text(a["activity"] or "", overflow="ellipsis", no_wrap=True))
    return table


def _tasks(view: dict[str, Any]) -> Table:
    table = Table(expand=True, box=None, pad_edge=False, header_style="bold dim")
    sessions = any(t.get("session_id") for t in view["tasks"])   # a column only where Claude Code ran
    columns: list[tuple[str, dict[str, Any]]] = [
        ("task", {"no_wrap": True}), ("status", {}), ("try", {"justify": "right"}), ("time", {"justify": "right"}),
        *([("claude session", {"no_wrap": True})] if sessions else []), ("activity / reason", {"ratio": 1, "no_wrap": True})]
    for col, kw in columns:
        table.add_column(col, overflow="ellipsis", **kw)
    for t in view["tasks"]:
        detail = t["activity"] if t["status"] in ("running", "gating", "merging") else (t["reason"] or t["gate"] or "")
        cells: list[Any] = [t["id"], Text(t["status"], style=COLOURS.get(t["status"], "")), str(t["attempt"] or ""),
                            clock(t["elapsed"])]
        if sessions:
            cells.append(t.get("session_id") or "")
        table.add_row(*cells, Text(detail or "", overflow="ellipsis", no_wrap=True))
    return table


def _findings(status: dict[str, Any], per_task: int = 5) -> list[Text]:
    """Under the board: what failed tasks' checks found, and how to reopen their Claude sessions."""
    lines: list[Text] = []
    for t in status["tasks"]:
        if t["status"] != "failed":
            continue
        found = t["findings"]
        for f in found[:per_task]:
            where = f"{f['path']}:{f['line']}" if f["path"] and f["line"] is not None else (f["path"] or "")
            mark, style = ("!", "yellow") if f["status"] == "warn" else ("✗", "red")
            lines.append(Text(f"{mark} {t['id']} {f['check']}: " + (f"{where}: " if where else "") + f["message"],
                              style=style, overflow="ellipsis", no_wrap=True))
        if len(found) > per_task:
            lines.append(Text(f"  … {len(found) - per_task} more: wswarm logs {t['id']}", style="dim"))
        if t.get("resume"):
            lines.append(Text(f"  resume {t['id']}'s Claude session: {t['resume']}", style="dim", overflow="fold"))
    return lines


def _strip(view: dict[str, Any]) -> Text:
    """One coloured block per task in plan order: the whole run at a glance, one line for 50 tasks."""
    text = Text("tasks ", style="dim")
    for t in view["tasks"]:
        text.append("■" if t["status"] != "pending" else "□", style=COLOURS.get(t["status"], ""))
    return text


def _forecast_line(view: dict[str, Any]) -> Text | None:
    """The standing conflict forecasts on one line: two running tasks forecast against each other
    are one entry, not two."""
    pairs: dict[tuple[str, str], set[str]] = {}
    for f in view.get("forecasts") or []:
        a, b = f["task"], f["other"]
        pair = (a, b) if b == "integration head" or a <= b else (b, a)
        pairs.setdefault(pair, set()).update(f["files"])
    if not pairs:
        return None
    said = " · ".join(f"{a} ↔ {b} in {', '.join(sorted(files))}" for (a, b), files in pairs.items())
    return Text(f"◆ {len(pairs)} conflict{'s' if len(pairs) != 1 else ''} forecast: {said}", style="yellow",
                overflow="ellipsis", no_wrap=True)


def _notes(view: dict[str, Any], limit: int) -> list[Text]:
    notes: list[Text] = []
    for c in view["conflicts"][-3:]:
        with_ = f" with {', '.join(c['with'])}" if c["with"] else ""
        notes.append(Text(f"⚠ conflict: {c['task']} (attempt {c['attempt']}) in {', '.join(c['files'])}{with_}",
                          style="yellow", overflow="ellipsis", no_wrap=True))
    for a in view["alerts"][-3:]:
        # First, where a long reason cannot push it off a narrow screen; it runs in the task's worktree.
        resume = f" (claude --resume {a['session_id']})" if a.get("session_id") else ""
        notes.append(Text(f"✗ {a['task'] or 'run'} {a['kind']}{resume}: {a['text']}", style="red", overflow="ellipsis",
                          no_wrap=True))
    # Last, so a short screen keeps what stands now over what happened before.
    forecast = _forecast_line(view)
    if forecast is not None:
        notes.append(forecast)
    return notes[-limit:] if limit > 0 else []


def render(view: dict[str, Any], *, height: int = 40, full: bool = False) -> RenderableType:
    """One frame. FULL lists every task (the static `status`); otherwise the agent grid, sized to
    HEIGHT lines so the live display never scrolls (a frame taller than the screen flickers)."""
    parts: list[RenderableType] = _header(view)
    if full:
        parts.append(_tasks(view))
        parts.extend(_notes(view, 6))
        return Group(*parts)
    budget = max(4, height - 1) - len(parts) - 2          # header row of the grid, the strip
    agent_rows = min(len(view["agents"]), max(1, budget - 2))
    parts.append(_agents(view, agent_rows))
    parts.append(_strip(view))
    budget -= 1 + min(len(view["agents"]), agent_rows)
    notes = _notes(view, min(6, budget))
    parts.extend(notes)
    budget -= len(notes)
    # Activity is already on each agent's row; the lines below say what happened to tasks.
    happened = [e for e in view["recent"] if e["kind"] != "agent-activity"]
    for e in happened[-max(0, min(8, budget)):] if budget > 0 else []:
        stamp = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
        parts.append(Text(f"{stamp} {e['task'] or '':<14} {e['text']}", style="dim", overflow="ellipsis",
                          no_wrap=True))
    return Group(*parts)


def board(store: RunStore) -> RenderableType:
    """The static board of `wswarm status`: the whole event log folded once, then what the failed
    tasks' checks found (from the run's state)."""
    b = Board(store)
    b.poll()
    return Group(render(b.view(), full=True), *_findings(status_data(store)))


def plain_line(event: dict[str, Any]) -> str | None:
    """An event as one timestamped line; activity lines stay in the logs (they come several a second)."""
    if event.get("kind") == "agent-activity":
        return None
    stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
    return f"{stamp} {event['kind']:<16} {event.get('task', '')} {details(event)}".rstrip()


@contextmanager
def watch(store: RunStore, console: Console) -> Iterator[None]:
    """Show the run's progress for the duration of the block."""
    if console.is_terminal:
        board_ = Board(store)
        with Live(console=console, refresh_per_second=REFRESH_PER_SECOND, transient=False,
                  vertical_overflow="crop", get_renderable=lambda: board_.frame(console)):
            yield
        return

    # Written as they are, not through rich: no terminal means no styles and no wrapping, and its
    # rendering (~0.7 ms a line, on the orchestrator's and the workers' threads) is most of a line's cost.
    lock = threading.Lock()       # events come from every worker thread

    def line(event: dict[str, Any]) -> None:
        text = plain_line(event)
        if text is None or console.quiet:
            return
        with lock:
            try:
                console.file.write(terminal_text(text) + "\n")
                console.file.flush()
            except BrokenPipeError:
                console.on_broken_pipe()

    store.listeners.append(line)
    try:
        yield
    finally:
        store.listeners.remove(line)


def attach(store: RunStore, console: Console, *, poll: float = 1 / REFRESH_PER_SECOND) -> None:
    """`status --watch`: follow a run driven by another process until it finishes or stops, or
    until CONSOLE turns quiet (its reader went away: `status --watch | head -2`; see
    output.console). Ctrl-C leaves the watcher only; the run goes on."""
    board_ = Board(store)
    try:
        if console.is_terminal:
            with Live(console=console, refresh_per_second=REFRESH_PER_SECOND, transient=False,
                      vertical_overflow="crop", get_renderable=lambda: board_.frame(console)):
                while not board_.over() and not console.quiet:
                    time.sleep(poll)
            return
        while not console.quiet:
            done = board_.over()   # judged before reading, so the events that ended the run are printed
            for event in board_.poll():
                text = plain_line(event)
                if text is not None:
                    console.print(text, markup=False, highlight=False, soft_wrap=True)
            if done:
                return
            time.sleep(poll)
    except KeyboardInterrupt:
        return
