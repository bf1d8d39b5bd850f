"""A worker: its own clone and slots, attempts read from a Redis consumer group, outcomes sent back.

It reads a request only when it has a free agent and its machine's limits admit one more, checks
the request's signature before anything else, runs the attempt with the same `AttemptRunner` as a
local run, pushes the task branch, sends the outcome, and only then acknowledges the request. While
an attempt runs its entry is claimed again and again by its owner (a heartbeat), so the integrator
reclaims only the attempts of a worker that stopped answering.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from worktree_swarm.agents.base import News
from worktree_swarm.agents.registry import agent_for_task
from worktree_swarm.config import Config
from worktree_swarm.gate.cache import GateCache
from worktree_swarm.git import residue
from worktree_swarm.git.refs import encode
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.worktrees import WorktreePool
from worktree_swarm.remote import gitwire, inline
from worktree_swarm.remote import protocol as p
from worktree_swarm.remote.client import retrying
from worktree_swarm.sandbox import Confinement, available as sandbox_available
from worktree_swarm.store import layout
from worktree_swarm.swarm import admission
from worktree_swarm.swarm.attempt import AttemptRunner, Outcome, converting_config
from worktree_swarm.util import proc
from worktree_swarm.util.errors import CommandError, WswarmError
from worktree_swarm.util.redact import secret_env_values
from worktree_swarm.util.types import RunId, Sha
from worktree_swarm.store.events import EventKind

REGISTER_EVERY = 2.0            # seconds between updates of this worker's entry for `wswarm workers`
REGISTRY_TTL = 30               # seconds it outlives a worker that stopped without saying so
LOG_TAIL_BYTES = 256 * 1024     # of an attempt's agent log, sent with its outcome for `wswarm logs`
# Start commits fetched lately keep a local ref each: the next fetch names them as commits this clone
# has, so only what was merged since travels (without one, every fetch would bring the run's whole
# history since the clone's branches). More would only lengthen the negotiation.
KEEP_STARTS = 8
# How long a worker waits for a start commit to reach the remote: the start of a request that carried
# its objects is pushed only when a worker without their base asks for it.
START_WAIT_S = 15.0
MAINTAIN_EVERY = 25             # attempts between two looks at whether the clone needs git's housekeeping

Say = Callable[[str], None]


@dataclass
class _Held:
    """An attempt this worker runs: the request entry it keeps claimed, and how to stop it."""

    stream: str
    entry: bytes
    assignment: p.Assignment
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: bool = False
    objects: str | None = None      # the branch's objects beyond its start's, sent with the outcome
    beat: float = field(default_factory=time.monotonic)    # when its entry was last claimed again
    news: News = field(default_factory=News)                # what the integrator tells its agent


class StreamLog:
    """The AttemptLog of one attempt on a worker: files in the worker's folder, events on the run's stream."""

    def __init__(self, worker: Worker, held: _Held) -> None:
        self.worker = worker
        self.held = held

    def attempt_dir(self, task_id: str, n: int) -> Path:
        path = self.worker.attempts_root / self.held.assignment.run / encode(task_id) / str(n)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def event(self, kind: EventKind, task: str | None = None, **data: Any) -> object:
        a = self.held.assignment
        self.worker.tell(self.worker.names.events(a.run), "event",
                         p.event_body(a.run, a.token, self.worker.name, kind, task, data))
        return None


class Worker:
    def __init__(self, *, client: redis.Redis, key: bytes, repo: Repo, remote: str, config: Config,
                 pool: WorktreePool, names: p.Names, name: str, agents: int, agent_cmd: str | None,
                 say: Say) -> None:
        self.client = client
        self.key = key
        self.repo = repo
        self.remote = remote
        self.config = config
        self.pool = pool
        self.names = names
        self.name = name
        self.agents = agents
        self.agent_cmd = agent_cmd
        self.say = say
        self.attempts_root = repo.state_dir / "worker" / "attempts"
        self.pool_root = layout.worktrees_dir(repo.state_dir)
        self.cache = GateCache(layout.gate_cache(repo.state_dir), enabled=config.gate.cache)
        self.secret_values = secret_env_values(os.environ)
        # Kept from attempt to attempt, as a local run keeps them: the slots' last listings, and whether
        # git's configuration here converts files (read once, like this worker's own configuration).
        self.scanner = residue.Scanner()
        self.converting = converting_config(repo)
        self.throttle = admission.Throttle(admission.Admission(config.limits, state_dir=repo.state_dir),
                                           lambda kind, data: say(f"{kind}: {data}"))
        self._held: dict[bytes, _Held] = {}
        self._lock = threading.Lock()
        # Twice the agents: an attempt whose slot is still being scrubbed holds a thread, not an agent.
        self._threads = ThreadPoolExecutor(max_workers=2 * agents, thread_name_prefix="wswarm-worker")
        self._freed = threading.Event()      # an attempt ended: a full worker reads again at once
        self._news_read: dict[str, str] = {}  # run -> the last news entry read
        self._idle = False                    # no run was open at the last look
        self._starts: deque[str] = deque()     # local refs of the start commits fetched, oldest first
        self._pushed: deque[str] = deque()     # local refs of the task branches sent, oldest first
        self._fetching: dict[str, threading.Lock] = {}   # start commit -> held while one thread fetches it
        self.done = 0

    # -- messages ----------------------------------------------------------------------------

    def send(self, stream: str, kind: str, body: dict[str, Any]) -> None:
        self.client.xadd(stream, p.seal(self.key, kind, body))  # type: ignore[arg-type]

    def tell(self, stream: str, kind: str, body: dict[str, Any]) -> None:
        """Send an event or a phase, which the attempt does not wait on: while Redis is unreachable for
        longer than a few seconds it is dropped (and said here), never the attempt's failure."""
        try:
            retrying(lambda: self.send(stream, kind, body), for_s=5.0)
        except redis.RedisError as exc:
            self.say(f"dropped a {kind} for {body.get('task')}: {exc}")

    # -- the loop ------------------------------------------------------------------------------

    def serve(self, stop: threading.Event) -> None:
        """Take and run attempts until STOP; then cancel those running and report them interrupted."""
        beat = threading.Thread(target=self._heartbeats, args=(stop,), name="wswarm-heartbeat", daemon=True)
        beat.start()
        # Start refs a previous life of this worker fetched: their runs are over or someone else's now.
        left = self.repo.git("for-each-ref", "--format=%(refname)", "refs/wswarm/").stdout.split()
        gitwire.forget_refs(self.repo, left)
        try:
            while not stop.is_set():
                try:
                    self._take(stop)
                except redis.ConnectionError as exc:
                    self.say(f"redis unreachable ({exc}); trying again")
                    stop.wait(1.0)
        finally:
            with self._lock:
                for held in self._held.values():
                    held.cancel.set()
            self._threads.shutdown(wait=True)
            self.client.delete(p.worker_key(self.name))
            self.throttle.admission.close()

    def _take(self, stop: threading.Event) -> None:
        self._freed.clear()         # before counting: an attempt ending after the count wakes the wait
        with self._lock:
            busy = len(self._held)
        free = self.agents - busy
        if free <= 0 or not self.throttle.admit(running=busy):
            self._freed.wait(0.2)
            return
        # While idle, the newest entry of `opened` is read before the set: a run opened after the
        # set was read wakes the wait below at once, not at its timeout.
        newest: Any = self.client.xrevrange(self.names.opened, count=1) if self._idle else None
        members: Any = self.client.smembers(self.names.runs)
        runs = sorted(r.decode() for r in members)
        if not runs:
            if self._idle:
                since = _text(newest[0][0]) if newest else "0-0"
                self.client.xread({self.names.opened: since}, count=1, block=1000)
            self._idle = True
            return
        self._idle = False
        streams: dict[Any, Any] = {self.names.requests(run): ">" for run in runs}
        try:
            got: Any = self.client.xreadgroup(p.WORKER_GROUP, self.name, streams, count=free, block=1000)
        except redis.ResponseError as exc:
            # A run ended between the two calls (NOGROUP), or while this read was blocked on its stream
            # (Redis 7 unblocks it: UNBLOCKED the stream key no longer exists).
            if "NOGROUP" not in str(exc) and "UNBLOCKED" not in str(exc):
                raise
            return
        for stream, entries in got or []:
            for entry, fields in entries:
                self._accept(stream.decode(), entry, fields)

    def _accept(self, stream: str, entry: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            assignment = p.parse_request(p.unseal(self.key, fields, kind="request"))
            if stream != self.names.requests(assignment.run):
                raise p.Refused(f"a request of run {assignment.run} on the stream of another run")
        except p.Refused as exc:
            self.say(f"refused request {entry.decode()} on {stream}: {exc}")
            self.client.xack(stream, p.WORKER_GROUP, entry)
            if isinstance(exc, p.VersionSkew):
                self._refuse_skew(fields, str(exc))
            return
        held = _Held(stream=stream, entry=entry, assignment=assignment)
        # The box exists before the agent does: news sent while the attempt sets up is not lost.
        held.news = News(StreamLog(self, held).attempt_dir(assignment.request.task.id, assignment.request.n)
                         / "news.jsonl")
        with self._lock:
            self._held[entry] = held
        self._threads.submit(self._run, held)

    def _refuse_skew(self, fields: dict[bytes, bytes], reason: str) -> None:
        """A signed request from another version: its integrator hears why, as the attempt's outcome."""
        body = p.peek(fields)
        run, token, task, n = body.get("run"), body.get("token"), body.get("task"), body.get("n")
        if not (isinstance(run, str) and isinstance(token, str) and isinstance(task, dict) and isinstance(n, int)):
            return
        self.send(self.names.outcomes(run), "outcome",
                  {"run": run, "token": token, "worker": self.name, "task": task.get("id"), "n": n, "kind": "error",
                   "branch": body.get("branch"), "start": body.get("start"), "reason": reason, "feedback": "",
                   "refused": True})

    def _run(self, held: _Held) -> None:
        a = held.assignment
        req = a.request
        self.tell(self.names.events(a.run), "event",
                  p.event_body(a.run, a.token, self.name, EventKind.ATTEMPT_ASSIGNED, req.task.id,
                               {"attempt": req.n, "host": socket.gethostname()}))
        out = Outcome(task=req.task, n=req.n, kind="error", branch=req.branch, start=req.start)
        log = StreamLog(self, held)
        crash = ""
        try:
            out = self._attempt(held, log)
        except WswarmError as exc:
            out.reason = f"on worker {self.name}: {exc.message}"
            out.feedback = out.reason
        except Exception as exc:  # noqa: BLE001 - the worker serves other runs; this run stops on it (below)
            crash = traceback.format_exc()
            self.say(f"attempt {req.task.id}#{req.n} crashed:\n{crash}")
            out.reason = f"wswarm crashed on worker {self.name}: {type(exc).__name__}: {exc}"
        try:
            tail = _tail(log.attempt_dir(req.task.id, req.n) / layout.AGENT_LOG)
            body = p.outcome_body(a.run, a.token, self.name, out, log_tail=tail, objects=held.objects)
            if crash:       # a bug, not the task's failure: the integrator stops the run with its traceback
                body["crash"] = crash[-8000:]
            # Through a Redis restart too: the attempt's work is not thrown away for a blip.
            retrying(lambda: self.send(self.names.outcomes(a.run), "outcome", body), for_s=4 * a.lease,
                     on_wait=lambda exc: self.say(f"redis unreachable ({exc}); sending the outcome again"))
            # Acknowledged only once the outcome is on its stream: a worker dying in between leaves the
            # entry pending, and the integrator reclaims it.
            retrying(lambda: self.client.xack(held.stream, p.WORKER_GROUP, held.entry), for_s=4 * a.lease)
            self.done += 1
        finally:
            # The agent is free once its outcome is sent: the next request is read now, and its start
            # commit fetched while this slot is scrubbed (the pool hands it over when it is back).
            with self._lock:
                self._held.pop(held.entry, None)
            self._freed.set()
            if out.worktree is not None:
                self.pool.release(out.worktree, keep=False)
            if self.repo.branch_sha(req.branch) is not None:
                self.repo.delete_branch(req.branch)
            self._forget_starts()
            if (self.done + 1) % MAINTAIN_EVERY == 0:
                self._maintain()

    def _attempt(self, held: _Held, log: StreamLog) -> Outcome:
        a = held.assignment
        req = a.request
        try:
            agent = agent_for_task(self.config, req.task, agent_cmd=self.agent_cmd)
        except WswarmError as exc:
            raise WswarmError(f"this worker cannot run the task's agent: {exc.message}") from None
        if req.task.command and agent.name.startswith("command ("):
            raise WswarmError("this worker runs only the agents its own configuration names, not a task's command")
        self._fetch_start(a, req.start)
        confinement = Confinement(sandboxed=agent.confined and sandbox_available(),
                                  network=self.config.sandbox.network, pass_env=self.config.gate.pass_env)
        runner = AttemptRunner(repo=self.repo, config=self.config, store=log, pool=self.pool,
                               pool_root=self.pool_root, agent_for=lambda task: agent, cache=self.cache,
                               cancel=held.cancel, run_id=RunId(a.run), agent_timeout=self.config.agents.timeout,
                               secret_values=self.secret_values, confinement=confinement,
                               report=lambda task_id, fields: self._phase(a, task_id, fields),
                               scanner=self.scanner, converting=self.converting)
        runner.news[req.key] = held.news
        out = runner.run(req.task, req.n, req.branch, req.start, req.feedback, env=req.env,
                         dependencies=req.dependencies)
        if out.head is not None and out.kind not in ("interrupted",):
            try:
                # The branch's few new objects go with the outcome (the integrator has its start: it made
                # it), which spares a push here and a fetch there; a branch bringing more is pushed.
                held.objects = inline.objects_since(self.repo, out.head, req.start)
                if held.objects is None:
                    gitwire.push_task(self.repo, self.remote, a.run, req.task.id, req.n, req.branch)
                # Named here too once the branch is gone: the next start, which merged it, is fetched
                # without its objects (the remote learns this clone has them).
                ref = p.task_ref(a.run, req.task.id, req.n)
                gitwire.keep_ref(self.repo, ref, out.head)
                with self._lock:
                    self._pushed.append(ref)
            except CommandError as exc:
                out.kind, out.reason = "error", f"worker {self.name} could not push the task branch: {exc}"
                out.feedback = ""
        return out

    def _fetch_start(self, a: p.Assignment, start: Sha) -> None:
        """START here: from the objects its request carried when this clone has their base, else
        fetched (the integrator pushes a start whose objects went inline only when a worker asks for
        it: this one asks, then waits a little for it); attempts reading the same start at once get it
        once (the others wait for it)."""
        run, objects = a.run, a.objects
        with self._lock:
            lock = self._fetching.setdefault(start, threading.Lock())
        try:
            with lock:
                if inline.has_commit(self.repo, start):
                    return
                if (objects is not None and inline.has_commit(self.repo, objects[0])
                        and inline.apply_objects(self.repo, start, objects[1],
                                                 pack_from=inline.PACK_FROM_WORKER) is not None):
                    gitwire.keep_ref(self.repo, p.start_ref(run, start), start)
                    fetched = True
                else:
                    if objects is not None:
                        self.tell(self.names.events(run), "need", p.need_body(run, a.token, self.name, start))
                    fetched = gitwire.fetch_start(self.repo, self.remote, run, start, wait_s=START_WAIT_S)
                if fetched:
                    with self._lock:
                        self._starts.append(p.start_ref(run, start))
        finally:
            with self._lock:
                if not lock.locked():
                    self._fetching.pop(start, None)

    def _forget_starts(self) -> None:
        """Delete the local refs of all but the KEEP_STARTS start commits fetched last (after an attempt,
        off the path of the next one's dispatch)."""
        with self._lock:
            old = [self._starts.popleft() for _ in range(len(self._starts) - KEEP_STARTS)]
            old += [self._pushed.popleft() for _ in range(len(self._pushed) - KEEP_STARTS)]
        try:
            gitwire.forget_refs(self.repo, old)
        except CommandError as exc:       # a name to negotiate with, nothing an attempt needs
            self.say(f"could not delete old start refs: {str(exc).splitlines()[0]}")

    def _maintain(self) -> None:
        try:
            gitwire.maintain(self.repo)
        except CommandError as exc:
            self.say(f"git maintenance failed: {str(exc).splitlines()[0]}")

    def _phase(self, a: p.Assignment, task_id: str, fields: dict[str, Any]) -> None:
        if "worktree" in fields:
            fields = {**fields, "worktree": f"{self.name}:{fields['worktree']}"}
        self.tell(self.names.events(a.run), "phase", p.phase_body(a.run, a.token, self.name, task_id, fields))

    # -- heartbeats ----------------------------------------------------------------------------

    def _heartbeats(self, stop: threading.Event) -> None:
        """Claim each held entry again at a quarter of its lease (its idle time drops to zero), cancel
        an attempt whose entry was reclaimed meanwhile or whose run was stopped, and say who we are."""
        registered = time.monotonic()
        while not stop.wait(0.25):
            try:
                self._beat()
                self._news()
                if time.monotonic() - registered >= REGISTER_EVERY:
                    with self._lock:
                        busy = len(self._held)
                    self.register(busy=busy)
                    registered = time.monotonic()
            except redis.ConnectionError:
                continue        # Redis is back soon, or the main loop says it is not
            except Exception:  # noqa: BLE001 - a heartbeat must outlive a bad moment
                self.say("heartbeat failed:\n" + traceback.format_exc())

    def _beat(self) -> None:
        now = time.monotonic()
        with self._lock:
            due = [h for h in self._held.values() if not h.lost and now - h.beat >= h.assignment.lease / 4]
        for h in due:
            kept = self.client.xclaim(h.stream, p.WORKER_GROUP, self.name, 0, [h.entry], justid=True)
            stopped = self.client.exists(self.names.stopped(h.assignment.run))
            h.beat = now
            if not kept or stopped:
                h.lost = True
                h.cancel.set()
                why = "the run was stopped" if stopped else "the integrator took it back"
                self.say(f"attempt {h.assignment.request.task.id}#{h.assignment.request.n}: {why}; stopping it")


    def _news(self) -> None:
        """Pass the news of the runs this worker has attempts of to the agents each item is addressed
        to (by token); an item not signed with the cluster key is refused and said."""
        with self._lock:
            held = {(h.assignment.run, h.assignment.token): h for h in self._held.values()}
        runs = {run for run, _ in held}
        for run in set(self._news_read) - runs:
            del self._news_read[run]
        if not runs:
            return
        by_stream = {self.names.news(run): run for run in sorted(runs)}
        streams: dict[Any, Any] = {stream: self._news_read.get(run, "0-0") for stream, run in by_stream.items()}
        got: Any = self.client.xread(streams, count=100)
        for stream, entries in got or []:
            run = by_stream[_text(stream)]
            for entry, fields in entries:
                self._news_read[run] = _text(entry)
                try:
                    body = p.unseal(self.key, fields, kind="news")
                except p.Refused as exc:
                    self.say(f"refused news {_text(entry)} of run {run}: {exc}")
                    continue
                h = held.get((run, str(body.get("token"))))
                item = body.get("item")
                if h is not None and not h.lost and body.get("run") == run and isinstance(item, dict):
                    h.news.post(item)

    def register(self, *, busy: int) -> None:
        key = p.worker_key(self.name)
        self.client.hset(key, mapping={
            "name": self.name, "host": socket.gethostname(), "pid": os.getpid(), "repo": self.names.repo,
            "agents": self.agents, "busy": busy, "done": self.done, "version": p.VERSION,
            "load": f"{os.getloadavg()[0]:.2f}", "heartbeat": f"{time.time():.3f}"})
        self.client.expire(key, REGISTRY_TTL)


def _tail(path: Path) -> str:
    try:
        fd = proc.open_regular(path, os.O_RDONLY)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - LOG_TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def stderr_say(line: str) -> None:
    print(f"wswarm worker: {line}", file=sys.stderr, flush=True)
