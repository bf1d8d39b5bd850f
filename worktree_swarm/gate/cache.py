"""Check results remembered by (tree, check definition): a tree is never checked twice by the same check.

Shared by every task, attempt and run of a repository (a SQLite file under the git common dir).
The merge-result gate benefits most: the integration head often has exactly the tree of the last
merged branch, which was just checked.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from worktree_swarm.config import CheckConfig
from worktree_swarm.gate.report import CheckResult

MAX_ROWS = 20_000


def cache_key(check: CheckConfig, tree: str, *, files: Sequence[str] = (), setup: str | None = None) -> str:
    """Everything that decides a check's verdict besides the machine: the tree, the check, the
    files an `affected` check is given, and the worktree setup step."""
    material = json.dumps([tree, asdict(check), list(files), setup], sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


class GateCache:
    """PATH's remembered results; with enabled=False it remembers nothing (checks that read more
    than the tree: a network, a service, the time)."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, result TEXT NOT NULL, "
                             "output TEXT NOT NULL, created REAL NOT NULL)")

    def get(self, key: str) -> tuple[CheckResult, str] | None:
        """The remembered result and full output, or None."""
        if not self.enabled:
            return None
        with self._lock:
            row = self._db.execute("SELECT result, output FROM results WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return CheckResult(**json.loads(row[0])), row[1]

    def put(self, key: str, result: CheckResult, output: str) -> None:
        """Remember a verdict; interrupted, timed-out and not-run results say nothing about the tree."""
        if not self.enabled or result.status not in ("pass", "fail") or result.note.startswith("timed out"):
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                             (key, json.dumps(asdict(result)), output, time.time()))
            self._db.execute("DELETE FROM results WHERE key IN (SELECT key FROM results ORDER BY created DESC "
                             "LIMIT -1 OFFSET ?)", (MAX_ROWS,))

    def close(self) -> None:
        self._db.close()
