"""`wswarm stats`: what every run of the repository cost, run by run and in total, and how many
completed cleanly (the figures and their definitions: store/metrics.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from worktree_swarm.commands.status import store_figures
from worktree_swarm.git.repo import Repo
from worktree_swarm.store.metrics import Figures, combine
from worktree_swarm.store.run_store import RunStore, list_runs

if TYPE_CHECKING:
    from rich.table import Table

# Short names of the causes of waste, for a table cell ("2 gate, 1 conflict").
_SHORT = {"conflict": "conflict", "gate": "gate", "agent": "agent", "timeout": "timeout", "no_op": "no-op",
          "ejected": "ejected", "error": "error"}
HEAD = ("RUN", "MERGED", "ATT/TASK", "WASTED", "WASTED TIME", "WASTED $", "HELD", "FORECAST ✓/✗/?", "RESULT")
_WRAPS = HEAD.index("WASTED")   # the widest cell: kept readable when a narrow terminal wraps the table


def stats(*, cwd: Path) -> dict[str, Any]:
    """{"runs": [{"run", "state", "title", "created", "finished", "figures"}…] oldest first,
    "total": the figures added up, with the share of finished runs that completed (cleanly)}."""
    rows: list[dict[str, Any]] = []
    figures: list[Figures] = []
    for folder in list_runs(Repo.discover(cwd).state_dir):
        store = RunStore.open(folder)
        try:
            run, f = store.run(), store_figures(store)
            rows.append({"run": run.id, "state": store.effective_state(), "title": run.options.get("title") or "",
                         "created": run.created, "finished": run.finished, "figures": f.data()})
            figures.append(f)
        finally:
            store.close()
    return {"runs": rows, "total": combine(figures).total_data()}


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    s = round(value)
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _cells(name: str, f: dict[str, Any], result: str) -> tuple[str, ...]:
    wasted = f["wasted"]
    causes = ", ".join(f"{n} {_SHORT.get(c, c)}" for c, n in wasted["by_cause"].items() if n)
    per = f["attempts_per_merged_task"]
    held = f["held"]
    forecast = f["forecast"]
    return (name, f"{f['merged']}/{f['tasks']}", "—" if per is None else f"{per:.2f}",
            f"{wasted['attempts']}" + (f" ({causes})" if causes else ""), _seconds(wasted["seconds"]),
            f"${wasted['cost_usd']:.2f}", f"{held['tasks']} · {_seconds(held['seconds'])}" if held["tasks"] else "0",
            f"{forecast['came_true']}/{forecast['did_not']}/{forecast['unforecast']}", result)


def _result(state: str, f: dict[str, Any]) -> str:
    if state != "finished":
        return state      # running or interrupted: not judged yet
    return "clean" if f["clean"] else "completed" if f["completed"] else "not completed"


def _lines(data: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = [_cells(r["run"], r["figures"], _result(r["state"], r["figures"])) for r in data["runs"]]
    t = data["total"]
    runs = f"{t['runs']} run" + ("" if t["runs"] == 1 else "s")
    rows.append(_cells(f"total ({runs})", t, f"{t['clean_runs']}/{t['finished_runs']} clean"))
    return rows


def summary(data: dict[str, Any]) -> str:
    """The answer in one line: how many finished runs completed, and how many cleanly."""
    t = data["total"]
    finished = t["finished_runs"]
    if not finished:
        return f"no run has finished yet ({t['runs']} run(s) going or interrupted)"
    unfinished = t["runs"] - finished
    return (f"{t['clean_runs']} of {finished} finished runs completed cleanly ({_pct(t['clean_ratio'])}), "
            f"{t['completed_runs']} completed ({_pct(t['completed_ratio'])}): every task merged, cleanly when none "
            "needed a second attempt" + (f"; {unfinished} run(s) not finished are not counted" if unfinished else ""))


def _pct(ratio: float | None) -> str:
    return "—" if ratio is None else f"{100 * ratio:.0f}%"


def render(data: dict[str, Any]) -> str:
    """The table as plain text, aligned, with a header, a total row and the summary line.
    FORECAST is the conflict forecast's record: came true / did not / conflicts unforecast."""
    lines = [HEAD, *_lines(data)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEAD))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join([*text, "", summary(data)])


def table(data: dict[str, Any]) -> Table:
    """The same table for a terminal (rich); the caller prints `summary` under it."""
    from rich.table import Table

    out = Table(show_edge=False, pad_edge=False)
    for i, name in enumerate(HEAD):
        out.add_column(name.lower(), justify="left" if i in (0, _WRAPS, len(HEAD) - 1) else "right",
                       no_wrap=i == 0, min_width=12 if i == _WRAPS else None)
    rows = _lines(data)
    for row in rows[:-1]:
        out.add_row(*row)
    out.add_section()
    out.add_row(*rows[-1], style="bold")
    return out
