"""`RedisExecutor`: the loop's attempts run by workers on other machines.

Requests go on the run's request stream (read by the workers' consumer group); outcomes and events
come back on two streams this integrator reads with a group of its own. Delivery is at least once,
the effect exactly once: every request carries a fresh token, an attempt is live only under its
token, and whatever arrives under another (a reclaimed attempt's late result, a duplicate) is
rejected and logged; a task's outcome is handed to the loop at most once.

The loop's thread does no transport. A sender thread adds the requests submitted meanwhile, each with
its start commit's new objects when they fit, and pushes to the remote the start commits that do not
(and those a worker asks for), one push for the batch. A reader thread reads outcomes and events and
brings the branches of the outcomes it read together (`inbound`), so the loop merges one batch while
the next travels.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from worktree_swarm.git.repo import Repo
from worktree_swarm.remote import gitwire, inbound, inline
from worktree_swarm.remote import protocol as p
from worktree_swarm.remote.client import retrying
from worktree_swarm.remote.protocol import start_ref
from worktree_swarm.store.run_store import AttemptRow, RunStore
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import AttemptRequest, Executor, Phase
from worktree_swarm.util.errors import CommandError
from worktree_swarm.util.types import BranchName, Sha
from worktree_swarm.store.events import EventKind

T = TypeVar("T")
CONSUMER = "integrator"
# Refs of fetched task branches deleted from the remote together once this many wait (or with the
# next push of a start commit): every push and fetch reads the remote's whole list of refs.
DELETE_BATCH = 64
RECENT_STARTS = 32      # start commits a new one's inline objects may be counted from (the oldest that fits)
READ_BLOCK_MS = 250     # the reader's longest block on Redis: how long `close` may wait for it


@dataclass
class _Live:
    request: AttemptRequest
    token: str
    entry: str | None = None    # the request's stream entry, once its start commit is on the remote
    worker: str | None = None


class RedisExecutor(Executor):
    """Attempts on workers: at most AGENTS in flight; an attempt whose worker sends no heartbeat for
    LEASE seconds is taken back and ends as interrupted (not charged to its task)."""

    def __init__(self, *, repo: Repo, store: RunStore, client: redis.Redis, key: bytes, remote: str,
                 agents: int, lease: float) -> None:
        self.repo = repo
        self.store = store
        self.client = client
        self.key = key
        self.remote = remote
        self.agents = agents
        self.lease = lease
        self.run = store.run().id
        self.names = p.Names(p.repository_id(gitwire.roots(repo, store.run().base)))
        # Everything below is shared by the loop's thread, the sender and the reader: under _cond.
        self._cond = threading.Condition()
        self._live: dict[tuple[str, int], _Live] = {}
        self._by_token: dict[str, tuple[str, int]] = {}
        self._phases: list[Phase] = []
        self._ready: list[Outcome] = []     # outcomes whose branches are here, for the next wait
        self._transit = 0                   # outcomes read (their attempts no longer live) still being fetched
        self._sending: list[tuple[AttemptRequest, str]] = []   # (request, token) not yet on the stream
        self._news: list[tuple[str, Any]] = []     # (task, entry fields) for the news stream, not yet added
        self._pushed: set[str] = set()      # start commits this integrator put on the remote
        self._newest: str | None = None     # the last start submitted: kept there, the next is likely the same
        self._chain = inline.StartChain(repo, keep=RECENT_STARTS)   # the sender's: bases of inline objects
        self._inline: dict[str, tuple[str, str]] = {}   # the sender's: recent start -> (base, its objects)
        self._asked: set[str] = set()       # start commits a worker asked to find on the remote
        self._doomed: list[str] = []        # fetched task refs to delete from the remote
        self._failure: BaseException | None = None
        self._closing = False
        self._threads: list[threading.Thread] = []
        self._reclaimed_at = time.monotonic()
        self._open()

    def _open(self) -> None:
        for stream, group in ((self.names.requests(self.run), p.WORKER_GROUP),
                              (self.names.outcomes(self.run), p.INTEGRATOR_GROUP),
                              (self.names.events(self.run), p.INTEGRATOR_GROUP)):
            try:
                self.client.xgroup_create(stream, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self.client.delete(self.names.stopped(self.run))
        self.client.sadd(self.names.runs, self.run)
        self.client.xadd(self.names.opened, {"run": self.run}, maxlen=100, approximate=True)
        self.store.event(EventKind.DISTRIBUTED, repository=self.names.repo, remote=self.remote, lease_s=self.lease)

    # -- the interface ---------------------------------------------------------------------------

    def has_room(self) -> bool:
        return self.running() < self.agents

    def running(self) -> int:
        with self._cond:
            return len(self._live) + len(self._ready) + self._transit

    def submit(self, request: AttemptRequest) -> None:
        """REQUEST is live at once under a fresh token; the sender adds it to the stream once its start
        commit is on the remote, or before with that commit's objects (beyond a recent start's)."""
        self._check()
        self._start_threads()
        token = p.new_token()
        with self._cond:
            self._live[request.key] = _Live(request=request, token=token)
            self._by_token[token] = request.key
            self._sending.append((request, token))
            self._newest = request.start
            self._cond.notify_all()

    def here(self, key: tuple[str, int]) -> bool:
        return False        # on a worker, with its own clone

    def phases(self) -> list[Phase]:
        with self._cond:
            out, self._phases = self._phases, []
        return out

    def wait(self, timeout: float) -> list[Outcome]:
        self._start_threads()
        deadline = time.monotonic() + timeout
        while True:
            self._check()
            done = self._retrying(self._reclaim)
            with self._cond:
                if not done and not self._ready and self._failure is None and (self._live or self._transit):
                    until_reclaim = self._reclaimed_at + self.lease / 4 - time.monotonic()
                    self._cond.wait(max(0.0, min(deadline - time.monotonic(), until_reclaim)))
                done.extend(self._ready)
                self._ready = []
                outstanding = bool(self._live or self._transit)
            if done or not outstanding or time.monotonic() >= deadline:
                self._check()
                return done

    def adopt(self, attempts: list[AttemptRow]) -> set[tuple[str, int]]:
        """Attempts a killed integrator left running are taken over, not started again. Each one's
        request is still on the run's request stream under its token (a reclaimed attempt's request
        was deleted, and with it its token): it is live again under that token. Outcomes that arrived
        meanwhile, read or not by the dead integrator, are found on the outcome stream and handed to
        the next `wait`; the group then reads on from after them, so none is handed over twice.
        Called before the first `submit` or `wait` (the reader does not run yet)."""
        wanted = {(a.task_id, a.n) for a in attempts}
        requests = self.names.requests(self.run)
        listed: Any = self._retrying(lambda: self.client.xrange(requests))
        for entry, fields in listed:
            try:
                assignment = p.parse_request(p.unseal(self.key, fields, kind="request"))
            except p.Refused:
                continue
            key = assignment.request.key
            if assignment.run == self.run and key in wanted and key not in self._live:
                self._live[key] = _Live(request=assignment.request, token=assignment.token, entry=_text(entry))
                self._by_token[assignment.token] = key
        adopted = set(self._live)
        outcomes = self.names.outcomes(self.run)
        last = None
        found: list[inbound.Found] = []
        listed = self._retrying(lambda: self.client.xrange(outcomes))
        for entry, fields in listed:
            last = entry
            if str(p.peek(fields).get("token")) in self._by_token:
                got = self._outcome(fields)
                if got is not None:
                    found.append(got)
        self._deliver(found)
        if last is not None:
            self.client.xgroup_setid(outcomes, p.INTEGRATOR_GROUP, last)
        if adopted:
            self.store.event(EventKind.DISTRIBUTED, repository=self.names.repo, remote=self.remote,
                             adopted=sorted(f"{t}#{n}" for t, n in adopted),
                             finished_meanwhile=sorted(f"{f.out.task.id}#{f.out.n}" for f in found))
        return adopted

    def _retrying(self, fn: Callable[[], T]) -> T:
        """FN, again while Redis restarts (up to four leases); the outage is said once in the event log."""
        said = False

        def note(exc: Exception) -> None:
            nonlocal said
            if not said:
                self.store.event(EventKind.REDIS_UNREACHABLE, error=str(exc)[:200])
                said = True

        return retrying(fn, for_s=4 * self.lease, on_wait=note)

    def tell(self, key: tuple[str, int], item: dict[str, Any]) -> None:
        """ITEM goes to the worker running attempt KEY (signed, under the attempt's token), which posts it
        to that agent's news box; dropped when the attempt has ended or Redis does not answer soon.
        The sender adds it (with the others of the moment, in one round trip), not the loop."""
        with self._cond:
            live = self._live.get(key)
            if live is None:
                return
            self._news.append((key[0], p.seal(self.key, "news", p.news_body(self.run, live.token, key, item))))
            self._cond.notify_all()
        self._start_threads()

    def _add_news(self, news: list[tuple[str, Any]]) -> None:
        def add() -> None:
            pipe = self.client.pipeline(transaction=False)
            for _, fields in news:
                pipe.xadd(self.names.news(self.run), fields)
            pipe.execute()

        try:
            retrying(add, for_s=5.0)
        except redis.RedisError as exc:
            for task, _ in news:
                self.store.event(EventKind.REDIS_UNREACHABLE, task, error=f"news not sent: {str(exc)[:200]}")

    def stop(self) -> tuple[list[Outcome], list[BaseException]]:
        """Workers are told to cancel this run's attempts; each ends here as interrupted (outcomes
        already read stay on the outcome stream: a resumed run collects them)."""
        self.client.set(self.names.stopped(self.run), "1", ex=24 * 3600)
        with self._cond:
            keys = list(self._live)
        outcomes = [out for key in keys if (out := self._interrupted(key, "interrupted: the run stopped")) is not None]
        return outcomes, []

    def close(self) -> None:
        """The run leaves Redis and the remote: workers stop reading it, its refs there are deleted
        (its task branches are local by now)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=4 * self.lease)
        self.client.srem(self.names.runs, self.run)
        self.client.delete(self.names.requests(self.run), self.names.outcomes(self.run), self.names.events(self.run),
                           self.names.news(self.run))
        self.client.close()
        try:
            gitwire.delete_run_refs(self.repo, self.remote, self.run)
        except CommandError as exc:
            self.store.event(EventKind.CLEANUP_FAILED, error=f"the run's refs on {self.remote}: {str(exc).splitlines()[0]}")

    # -- the threads -----------------------------------------------------------------------------

    def _start_threads(self) -> None:
        if self._threads:
            return
        for name, target in (("wswarm-sender", self._send_loop), ("wswarm-reader", self._read_loop)):
            thread = threading.Thread(target=self._guarded, args=(target,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def _guarded(self, target: Callable[[], None]) -> None:
        """TARGET on its thread; whatever it raises (git or Redis giving up, a worker's crash report, a
        bug) is raised again on the loop's thread at its next call, which stops the run with it."""
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - handed over to the loop's thread, not swallowed
            with self._cond:
                if self._failure is None:
                    self._failure = exc
                self._closing = True
                self._cond.notify_all()

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _send_loop(self) -> None:
        """Add the news told meanwhile; for the requests submitted meanwhile: those whose start commit's
        objects fit inline, or that is on the remote, go on the stream at once; the other new start
        commits and those a worker asked for are pushed (one push, with the refs nobody needs any more
        deleted in passing), then the requests that waited for them go."""
        while True:
            with self._cond:
                while not (self._closing or self._sending or self._news or self._asked
                           or len(self._doomed) >= DELETE_BATCH):
                    self._cond.wait()
                if self._closing:
                    return
                batch, self._sending = self._sending, []
                news, self._news = self._news, []
                asked, self._asked = self._asked - self._pushed, set()
                batch = [(req, token) for req, token in batch if req.key in self._live]
                new = list(dict.fromkeys(req.start for req, _ in batch
                                         if req.start not in self._pushed and req.start not in self._inline))
            if news:        # a few ms, before a push of maybe a hundred
                self._add_news(news)
            for start in new:
                if (got := self._chain.add(start)) is not None:
                    self._inline[start] = got
            while len(self._inline) > 4 * RECENT_STARTS:
                del self._inline[next(iter(self._inline))]
            self._add_requests([(req, token, self._inline.get(req.start)) for req, token in batch
                                if req.start in self._pushed or req.start in self._inline])
            push = [s for s in new if s not in self._inline] + sorted(asked)
            with self._cond:
                deletions: list[str] = []
                if push or len(self._doomed) >= DELETE_BATCH:      # no push for deletions alone, mostly
                    wanted = {live.request.start for live in self._live.values()} | {self._newest}
                    stale = sorted(s for s in self._pushed if s not in wanted)
                    self._pushed.difference_update(stale)
                    deletions = [start_ref(self.run, s) for s in stale] + self._doomed
                    self._doomed = []
            try:
                gitwire.push_refs(self.repo, self.remote, {start_ref(self.run, s): Sha(s) for s in push}, deletions)
            except CommandError:
                if not deletions:
                    raise
                gitwire.push_refs(self.repo, self.remote, {start_ref(self.run, s): Sha(s) for s in push}, [])
            with self._cond:
                self._pushed.update(push)
            self._add_requests([(req, token, None) for req, token in batch
                                if req.start not in self._inline and req.start in push])

    def _add_requests(self, batch: list[tuple[AttemptRequest, str, tuple[str, str] | None]]) -> None:
        """BATCH's requests (each with its start's objects or not) on the stream, in one round trip; an
        attempt that ended meanwhile (stopped) has its entry deleted again, and a worker that read it
        already finds its token dead."""
        if not batch:
            return
        stream = self.names.requests(self.run)
        sealed = [p.seal(self.key, "request", p.request_body(self.run, token, req, lease=self.lease, objects=objects))
                  for req, token, objects in batch]

        def add() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for fields in sealed:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
            return list(pipe.execute())

        entries = self._retrying(add)
        orphans = []
        with self._cond:
            for (req, token, _), entry in zip(batch, entries):
                live = self._live.get(req.key)
                if live is not None and live.token == token:
                    live.entry = _text(entry)
                else:
                    orphans.append(entry)
        if orphans:
            self._retrying(lambda: self.client.xdel(stream, *orphans))

    def _read_loop(self) -> None:
        """Read outcomes and events as they come; fetch the branches of the outcomes read together in
        one fetch, then hand them to `wait`. What was read is acknowledged with the next read, in its
        round trip: not on the way from an outcome to its merge (a resumed run finds outcomes on the
        stream, acknowledged or not)."""
        streams: dict[Any, Any] = {self.names.events(self.run): ">", self.names.outcomes(self.run): ">"}
        read: dict[str, list[Any]] = {}

        def acknowledge_and_read() -> Any:
            pipe = self.client.pipeline(transaction=False)
            for name, ids in read.items():
                pipe.xack(name, p.INTEGRATOR_GROUP, *ids)
            pipe.xreadgroup(p.INTEGRATOR_GROUP, CONSUMER, streams, count=200, block=READ_BLOCK_MS)
            return pipe.execute()[-1]

        while not self._closing:
            got: Any = self._retrying(acknowledge_and_read)
            read = {}
            found: list[inbound.Found] = []
            for stream, entries in got or []:
                name = _text(stream)
                for _, fields in entries:
                    if name == self.names.events(self.run):
                        self._event(fields)
                    elif (out := self._outcome(fields)) is not None:
                        found.append(out)
                if entries:
                    read[name] = [entry for entry, _ in entries]
            self._deliver(found)

    # -- what comes back -------------------------------------------------------------------------

    def _event(self, fields: dict[bytes, bytes]) -> None:
        try:
            kind, body = p.unseal_any(self.key, fields, kinds=("event", "phase", "need"))
        except p.Refused as exc:
            self.store.event(EventKind.REMOTE_REFUSED, stream="events", reason=str(exc))
            return
        worker = str(body.get("worker"))
        with self._cond:
            live = self._current(body)
            if live is None:
                return      # a reclaimed attempt still talking: not this run's business any more
            live.worker = worker
            task = live.request.task.id
            if kind == "need":      # its start, and only its start, goes to the remote with the next push
                if body.get("start") == live.request.start:
                    self._asked.add(live.request.start)
                    self._cond.notify_all()
                return
        if kind == "phase":
            if update := inbound.phase(body):
                with self._cond:
                    self._phases.append((task, update))
            return
        inbound.record_event(self.store, body, task, worker)

    def _outcome(self, fields: dict[bytes, bytes]) -> inbound.Found | None:
        """The outcome an entry reports and its worker, when its token is a live attempt's; that
        attempt is settled here and then (in transit until `_deliver` hands it over)."""
        try:
            body = p.unseal(self.key, fields, kind="outcome")
        except p.Refused as exc:
            self.store.event(EventKind.REMOTE_REFUSED, stream="outcomes", reason=str(exc))
            return None
        with self._cond:
            live = self._current(body)
            if live is not None:
                self._forget(live.request.key)
                self._transit += 1
        if live is None:
            self.store.event(EventKind.REMOTE_RESULT_REJECTED, body.get("task") if isinstance(body.get("task"), str) else None,
                             attempt=body.get("n"), worker=body.get("worker"),
                             reason="its attempt was taken back and handed out again, or already settled")
            return None
        return inbound.found(self.store, body, live.request)

    def _deliver(self, found: list[inbound.Found]) -> None:
        """The branches of the outcomes FOUND brought here (`inbound.bring_branches`); then each outcome
        is ready for `wait`."""
        fetched = inbound.bring_branches(self.repo, self.remote, self.run, found)
        with self._cond:
            self._transit -= len(found)
            self._ready.extend(f.out for f in found)
            self._doomed.extend(fetched)
            self._cond.notify_all()

    def _current(self, body: dict[str, Any]) -> _Live | None:
        """The live attempt BODY speaks for: its token is the one that attempt was given, and the run
        is ours. Under _cond."""
        if body.get("run") != self.run:
            return None
        key = self._by_token.get(str(body.get("token")))
        return self._live.get(key) if key is not None else None

    # -- reclaiming --------------------------------------------------------------------------------

    def _reclaim(self) -> list[Outcome]:
        """Requests idle past the lease (their worker sent no heartbeat) are taken back with the
        engine's own XAUTOCLAIM; each ends as interrupted and its token dies with it."""
        if time.monotonic() - self._reclaimed_at < self.lease / 4:
            return []
        self._reclaimed_at = time.monotonic()
        stream = self.names.requests(self.run)
        got: Any = self.client.xautoclaim(stream, p.WORKER_GROUP, CONSUMER, int(self.lease * 1000),
                                          start_id="0-0", count=100, justid=True)
        claimed = [_text(e) for e in got or []]      # with JUSTID, the client returns the ids alone
        if not claimed:
            return []
        self.client.xack(stream, p.WORKER_GROUP, *claimed)
        self.client.xdel(stream, *claimed)
        with self._cond:
            by_entry = {live.entry: key for key, live in self._live.items() if live.entry is not None}
        out = []
        for entry in claimed:
            key = by_entry.get(entry)
            if key is None:
                continue
            with self._cond:
                live = self._live.get(key)
            if live is None:
                continue        # its outcome was read meanwhile
            worker = live.worker or "unknown"
            reason = f"interrupted: worker {worker} sent no heartbeat for {self.lease:g}s; its attempt was taken back"
            got_out = self._interrupted(key, reason)
            if got_out is not None:
                self.store.event(EventKind.ATTEMPT_RECLAIMED, key[0], attempt=key[1], worker=worker, reason=reason)
                out.append(got_out)
        return out

    def _interrupted(self, key: tuple[str, int], reason: str) -> Outcome | None:
        """Attempt KEY ends as interrupted, its token dead; None when it ended meanwhile (its outcome read)."""
        with self._cond:
            live = self._live.get(key)
            if live is None:
                return None
            self._forget(key)
        if live.entry is not None:
            self.client.xdel(self.names.requests(self.run), live.entry)
        return Outcome(task=live.request.task, n=live.request.n, kind="interrupted",
                       branch=BranchName(live.request.branch), start=live.request.start, reason=reason)

    def _forget(self, key: tuple[str, int]) -> None:
        """Under _cond."""
        live = self._live.pop(key)
        self._by_token.pop(live.token, None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

