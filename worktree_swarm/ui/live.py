"""Progress while a run is driven: a live grid on a terminal, timestamped lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worktree_swarm.state import RunStore
from worktree_swarm.status import activity, elapsed, status_data

COLOURS = {"pending": "dim", "running": "cyan", "gating": "yellow", "merging": "magenta",
           "merged": "green", "failed": "red", "blocked": "red dim"}


def board(store: RunStore) -> RenderableType:
    """The grid of tasks: status, attempt, elapsed time, the last line of the agent's log."""
    data = status_data(store)
    times = elapsed(store)
    table = Table(expand=True, box=None, pad_edge=False)
    for col, kw in (("task", {"no_wrap": True}), ("status", {}), ("try", {"justify": "right"}),
                    ("time", {"justify": "right"}), ("activity / reason", {"ratio": 1, "no_wrap": True})):
        table.add_column(col, **kw)
    for t in data["tasks"]:
        live = t["status"] in ("running", "gating", "merging")
        detail = activity(store, t["id"], t["attempts"]) if live else (t["reason"] or "")
        secs = times.get(t["id"])
        table.add_row(t["id"], Text(t["status"], style=COLOURS.get(t["status"], "")), str(t["attempts"] or ""),
                      f"{secs:.0f}s" if secs is not None else "", Text(detail, overflow="ellipsis"))
    merged = sum(t["status"] == "merged" for t in data["tasks"])
    head = Text(f"run {data['run']} · {data['state']} · {merged}/{len(data['tasks'])} merged · "
                f"{data['integration_branch']}", style="bold")
    return Group(head, table)


@contextmanager
def watch(store: RunStore, console: Console) -> Iterator[None]:
    """Show the run's progress for the duration of the block."""
    if console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=False,
                  get_renderable=lambda: board(store)):
            yield
        return

    def line(event: dict[str, Any]) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(event["ts"]))
        detail = " ".join(f"{k}={_short(v)}" for k, v in event.items()
                          if k not in ("ts", "kind", "task", "log") and v is not None)
        console.print(f"{stamp} {event['kind']:<16} {event.get('task', '')} {detail}".rstrip(),
                      markup=False, highlight=False, soft_wrap=True)

    store.listeners.append(line)
    try:
        yield
    finally:
        store.listeners.remove(line)


def _short(value: object) -> str:
    """Commit ids cut to 12 characters, lists joined: one event stays one readable line."""
    if isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
