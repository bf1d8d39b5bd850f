"""`wswarm workers`: the workers Redis has heard from lately, as each last described itself."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from worktree_swarm.remote import protocol as p
from worktree_swarm.remote.client import connect

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class WorkerRow:
    name: str
    host: str
    repo: str
    agents: int
    busy: int
    done: int
    load: str
    version: str
    seen_s: float        # seconds since its last heartbeat


def workers(*, redis_url: str) -> list[WorkerRow]:
    """Every worker whose entry has not expired (a worker refreshes it every 2 s; it lapses 30 s
    after the worker stops), by name."""
    client = connect(redis_url)
    try:
        rows = []
        for key in sorted(client.scan_iter(match=p.WORKER_PREFIX + "*", count=500)):
            raw: Any = client.hgetall(key)
            data = {k.decode(): v.decode(errors="replace") for k, v in raw.items()}
            if not data:
                continue       # expired between the scan and the read
            rows.append(WorkerRow(name=data.get("name", "?"), host=data.get("host", "?"),
                                  repo=data.get("repo", "?"), agents=_int(data.get("agents")),
                                  busy=_int(data.get("busy")), done=_int(data.get("done")),
                                  load=data.get("load", "?"), version=data.get("version", "?"),
                                  seen_s=max(0.0, time.time() - float(data.get("heartbeat") or 0))))
        return rows
    finally:
        client.close()


def render(rows: list[WorkerRow]) -> str:
    """One line per worker, aligned, with a header; a worker on another version says so."""
    head = ("WORKER", "HOST", "REPOSITORY", "BUSY/AGENTS", "DONE", "LOAD", "SEEN", "VERSION")
    lines = [head] + [(r.name, r.host, r.repo[:12], f"{r.busy}/{r.agents}", str(r.done), r.load,
                       f"{r.seen_s:.0f}s ago", r.version + ("" if r.version == p.VERSION else "  (not this version)"))
                      for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
