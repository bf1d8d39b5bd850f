"""A run's state under the git common dir: a SQLite database, an event log and a liveness lock.

One process (the orchestrator) writes; any number of `status` processes read while it runs (WAL).
The orchestrator holds an flock on run.lock for as long as it lives, so a run whose database says
"running" but whose lock is free was interrupted: status reports that instead of a lie.

Durability. Every write is in the WAL before it returns, so a crash of the process loses nothing.
Only a crash of the machine can lose the last writes, and those are not synced one by one (an fsync
costs ~0.2 ms each on a disk, ten of them per task): a rolled-back task or attempt row is rebuilt
from git on resume (merged tasks from the integration branch, unfinished ones run again). The
writes that must outlive a machine crash are those made ahead of git making or moving a ref (an
attempt's start, before its task branch; a move of the integration branch), which are synced
(`durable`); a sync also makes every earlier write durable, since the WAL is written in order. The
event log is a record of what happened, not synced.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worktree_swarm.util.errors import DiskFullError, RunNotFoundError, UsageError, no_room
from worktree_swarm.git.refs import encode
from worktree_swarm.swarm.scheduler import ACTIVE
from worktree_swarm.util.types import RunId
from worktree_swarm.store import layout
from worktree_swarm.store.layout import runs_dir
from worktree_swarm.store.events import EventKind

SCHEMA_VERSION = 2
# What each version adds to the one before; a run made by an older wswarm is brought up to date
# when opened, and one made by a newer wswarm is refused rather than misread.
_MIGRATIONS = {2: ("ALTER TABLE run ADD COLUMN integration_head TEXT",
                   "ALTER TABLE run ADD COLUMN integration_pending TEXT")}
# Task statuses as stored (their one spelling is scheduler.TaskStatus); the ones of a task in flight.
ACTIVE_STATUSES = tuple(str(status) for status in ACTIVE)

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE run (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, base TEXT NOT NULL, base_ref TEXT NOT NULL,
    integration_branch TEXT NOT NULL, plan TEXT NOT NULL, options TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, finished REAL, cost_usd REAL NOT NULL DEFAULT 0,
    merge_gate TEXT, integration_head TEXT, integration_pending TEXT);
CREATE TABLE tasks (
    id TEXT PRIMARY KEY, position INTEGER NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, branch TEXT, reason TEXT, summary TEXT,
    merge_commit TEXT, worktree TEXT, cost_usd REAL NOT NULL DEFAULT 0, updated REAL NOT NULL);
CREATE TABLE attempts (
    task_id TEXT NOT NULL, n INTEGER NOT NULL, outcome TEXT NOT NULL, branch TEXT NOT NULL,
    start TEXT NOT NULL, head TEXT, started REAL NOT NULL, finished REAL, reason TEXT,
    gate TEXT, files TEXT, added INTEGER, removed INTEGER, cost_usd REAL NOT NULL DEFAULT 0,
    usage TEXT, PRIMARY KEY (task_id, n));
"""


@dataclass(frozen=True)
class RunRow:
    id: RunId
    state: str
    base: str
    base_ref: str
    integration_branch: str
    plan: str
    options: dict[str, Any]
    created: float
    updated: float
    finished: float | None
    cost_usd: float
    merge_gate: str | None      # the merge-result gate's report as JSON, once it ran
    # Where the integration branch is, as the run itself moved it: the branch moves only from this
    # value; PENDING is a move started and not yet confirmed (a crash in between is resolved by git).
    integration_head: str | None = None
    integration_pending: str | None = None


@dataclass(frozen=True)
class TaskRow:
    id: str
    position: int
    status: str
    attempts: int
    branch: str | None
    reason: str | None
    summary: str | None
    merge_commit: str | None
    worktree: str | None
    cost_usd: float
    updated: float


@dataclass(frozen=True)
class AttemptRow:
    task_id: str
    n: int
    outcome: str         # running | gated | merged | ejected | conflict | gate-failed | agent-failed | timeout | no-op | interrupted
    branch: str
    start: str
    head: str | None
    started: float
    finished: float | None
    reason: str | None
    gate: str | None     # the gate report as JSON
    files: str | None    # JSON list of [path, added, removed]
    added: int | None
    removed: int | None
    cost_usd: float
    usage: str | None = None   # JSON: tokens, turns, session id and model of a model-backed agent


class RunStore:
    """The state of one run; safe to call from the orchestrator's threads."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self._db = sqlite3.connect(run_dir / layout.STATE_DB, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.row_factory = sqlite3.Row
        # Per connection, not stored in the file. Only in WAL mode: with a rollback journal a
        # machine crash could corrupt the database, not just lose its last writes.
        self._wal = False
        if self._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            self._use_wal()
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._events = open(run_dir / layout.EVENTS, "a", encoding="utf-8")
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    # -- creation and lookup -------------------------------------------------------------------

    @classmethod
    def create(cls, run_dir: Path, *, run_id: RunId, base: str, base_ref: str, integration_branch: str,
               plan_json: str, task_ids: list[str], options: dict[str, Any]) -> RunStore:
        """A new run's folder and database, all tasks pending. The folder must not exist yet."""
        run_dir.mkdir(parents=True)
        store = cls(run_dir)
        now = time.time()
        with store._tx() as db:
            db.execute("PRAGMA journal_mode=WAL")
            store._use_wal()
        with store._tx() as db:
            db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        with store._tx() as db:
            db.execute("BEGIN")
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            db.execute("INSERT INTO run (id, state, base, base_ref, integration_branch, plan, options, "
                       "created, updated, integration_head) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                       (run_id, base, base_ref, integration_branch, plan_json, json.dumps(options), now, now, base))
            db.executemany("INSERT INTO tasks (id, position, status, updated) VALUES (?, ?, 'pending', ?)",
                           [(tid, i, now) for i, tid in enumerate(task_ids)])
            db.execute("COMMIT")
        return store

    @classmethod
    def open(cls, run_dir: Path) -> RunStore:
        if not (run_dir / layout.STATE_DB).is_file():
            raise RunNotFoundError(f"{run_dir} holds no wswarm run")
        store = cls(run_dir)
        version = store._version()
        if version > SCHEMA_VERSION:
            store.close()
            raise UsageError(f"run {run_dir.name} was made by a newer wswarm (state version {version}; "
                             f"this one reads up to {SCHEMA_VERSION})", hint="upgrade wswarm to work with this run")
        return store

    def _version(self) -> int:
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        return int(row[0]) if row is not None else 1

    def migrate(self) -> None:
        """Bring a run made by an older wswarm up to date (its driver does, before it writes)."""
        version = self._version()
        if version >= SCHEMA_VERSION:
            return
        with self._tx() as db:
            db.execute("BEGIN")
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    db.execute(statement)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            db.execute("COMMIT")

    def close(self) -> None:
        self.release_lock()
        self._events.close()
        self._db.close()

    def _use_wal(self) -> None:
        self._wal = True
        self._db.execute("PRAGMA synchronous=NORMAL")

    @contextmanager
    def _tx(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, alone; with DURABLE, what is committed meanwhile is on disk when it ends."""
        with self._lock:
            try:
                if durable and self._wal:
                    self._db.execute("PRAGMA synchronous=FULL")
                try:
                    yield self._db
                finally:
                    if durable and self._wal:
                        self._db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.OperationalError as exc:
                if no_room(exc):
                    raise DiskFullError(f"no space left to write the run's state ({exc})") from exc
                raise

    # -- liveness ------------------------------------------------------------------------------

    def acquire_lock(self) -> bool:
        """Hold run.lock for this process's lifetime; False when another process holds it."""
        fd = os.open(self.dir / "run.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd
        # A crash can cut the last event short; end it so the next one starts a line of its own.
        # Only the lock holder may: a reader doing it could split a line being written.
        events = self.dir / layout.EVENTS
        if events.stat().st_size:
            with open(events, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._events.write("\n")
                    self._events.flush()
        return True

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_live(self) -> bool:
        """Whether some process is driving this run right now."""
        if self._lock_fd is not None:
            return True
        path = self.dir / "run.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- reads ---------------------------------------------------------------------------------

    def run(self) -> RunRow:
        with self._tx() as db:
            row = db.execute("SELECT * FROM run").fetchone()
        data = dict(row)
        data["options"] = json.loads(data["options"])
        return RunRow(**data)

    def tasks(self) -> list[TaskRow]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM tasks ORDER BY position").fetchall()
        return [TaskRow(**dict(r)) for r in rows]

    def task(self, task_id: str) -> TaskRow:
        with self._tx() as db:
            row = db.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"run {self.dir.name} has no task {task_id!r}")
        return TaskRow(**dict(row))

    def attempts(self, task_id: str | None = None) -> list[AttemptRow]:
        with self._tx() as db:
            if task_id is None:
                rows = db.execute("SELECT * FROM attempts ORDER BY started").fetchall()
            else:
                rows = db.execute("SELECT * FROM attempts WHERE task_id = ? ORDER BY n", (task_id,)).fetchall()
        return [AttemptRow(**dict(r)) for r in rows]

    def effective_state(self) -> str:
        """The run's state as the user should see it: a dead orchestrator means interrupted."""
        state = self.run().state
        if state == "running" and not self.is_live():
            return "interrupted"
        return state

    # -- writes --------------------------------------------------------------------------------

    def set_run(self, *, durable: bool = False, **fields: Any) -> None:
        """Update the run's row; DURABLE for a write that must survive a machine crash (one made
        ahead of moving a ref), which syncs it and everything written before it."""
        fields["updated"] = time.time()
        self._update("run", "1 = 1", (), fields, durable=durable)

    def set_task(self, task_id: str, **fields: Any) -> None:
        fields["updated"] = time.time()
        self._update("tasks", "id = ?", (task_id,), fields)

    def start_attempt(self, task_id: str, n: int, *, branch: str, start: str) -> None:
        """Record an attempt about to start. Durable: its task branch is made next, and a row lost to a
        machine crash would have the resumed run number the attempt again, onto a branch that exists."""
        with self._tx(durable=True) as db:
            db.execute("INSERT OR REPLACE INTO attempts (task_id, n, outcome, branch, start, started) "
                       "VALUES (?, ?, 'running', ?, ?, ?)", (task_id, n, branch, start, time.time()))

    def finish_attempt(self, task_id: str, n: int, **fields: Any) -> None:
        fields.setdefault("finished", time.time())
        self._update("attempts", "task_id = ? AND n = ?", (task_id, n), fields)

    def add_cost(self, task_id: str, usd: float) -> None:
        with self._tx() as db:
            db.execute("BEGIN")
            db.execute("UPDATE tasks SET cost_usd = cost_usd + ? WHERE id = ?", (usd, task_id))
            db.execute("UPDATE run SET cost_usd = cost_usd + ?", (usd,))
            db.execute("COMMIT")

    def add_run_cost(self, usd: float) -> None:
        """Spend that belongs to no task (the planner's): counted in the run's total only."""
        with self._tx() as db:
            db.execute("UPDATE run SET cost_usd = cost_usd + ?", (usd,))

    def _update(self, table: str, where: str, args: tuple[Any, ...], fields: dict[str, Any], *,
                durable: bool = False) -> None:
        # Column names come from our own keyword arguments, never from task or model text.
        columns = ", ".join(f"{name} = ?" for name in fields)
        with self._tx(durable=durable) as db:
            db.execute(f"UPDATE {table} SET {columns} WHERE {where}", (*fields.values(), *args))

    # -- events --------------------------------------------------------------------------------

    def event(self, kind: EventKind, task: str | None = None, **data: Any) -> dict[str, Any]:
        """Append one event to events.jsonl and return it."""
        record: dict[str, Any] = {"ts": round(time.time(), 3), "kind": kind}
        if task is not None:
            record["task"] = task
        record.update(data)
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            try:
                self._events.write(line + "\n")
                self._events.flush()
            except OSError as exc:
                if no_room(exc):
                    raise DiskFullError(f"no space left to write the run's event log ({exc.strerror})") from exc
                raise
        for listener in self.listeners:
            listener(record)
        return record

    def events(self) -> list[dict[str, Any]]:
        path = self.dir / layout.EVENTS
        out: list[dict[str, Any]] = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash; the rest of the log is still good
        return out

    # -- files ---------------------------------------------------------------------------------

    def attempt_dir(self, task_id: str, n: int) -> Path:
        path = self.dir / "attempts" / encode(task_id) / str(n)
        path.mkdir(parents=True, exist_ok=True)
        return path


def ensure_writable(state_dir: Path) -> None:
    """Refuse, before anything is created, when wswarm cannot keep state under STATE_DIR."""
    try:
        runs_dir(state_dir).mkdir(parents=True, exist_ok=True)
        probe = runs_dir(state_dir) / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"wswarm cannot write its state under {state_dir}: {exc.strerror or exc}",
                         hint="it lives under the repository's git common dir; make that writable") from None


def list_runs(state_dir: Path) -> list[Path]:
    """Run folders, oldest first (run ids start with their UTC start time)."""
    root = runs_dir(state_dir)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / layout.STATE_DB).is_file())


def find_run(state_dir: Path, run_id: str | None) -> Path:
    """The folder of RUN_ID, or of the newest run when None."""
    runs = list_runs(state_dir)
    if not runs:
        raise RunNotFoundError("this repository has no wswarm runs yet",
                               hint="start one with: wswarm start --plan plan.json")
    if run_id is None:
        return runs[-1]
    for path in runs:
        if path.name == run_id:
            return path
    matches = [p for p in runs if p.name.startswith(run_id)]
    if len(matches) == 1:
        return matches[0]
    raise RunNotFoundError(f"no run named {run_id!r}" + (" (ambiguous prefix)" if matches else ""),
                           hint="list runs with: wswarm status --all")
