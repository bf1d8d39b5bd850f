"""`RedisExecutor`: the loop's attempts run by workers on other machines.

Requests go on the run's request stream (read by the workers' consumer group); outcomes and events
come back on two streams this integrator reads with a group of its own. Code travels through the git
remote. Delivery is at least once, the effect exactly once: every request carries a fresh token, an
attempt is live only under its token, and whatever arrives under another (a reclaimed attempt's late
result, a duplicate) is rejected and logged; a task's outcome is handed to the loop at most once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis

from worktree_swarm.git.repo import Repo
from worktree_swarm.remote import gitwire
from worktree_swarm.remote import protocol as p
from worktree_swarm.remote.client import retrying
from worktree_swarm.store.run_store import AttemptRow, RunStore
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import AttemptRequest, Executor, Phase
from worktree_swarm.store import layout
from worktree_swarm.util.errors import CommandError
from worktree_swarm.util.types import BranchName, Sha
from worktree_swarm.store.events import EventKind, kind_of

T = TypeVar("T")
CONSUMER = "integrator"
# Fields a worker may set on a task row; anything else it says about a phase is ignored.
PHASE_FIELDS = frozenset({"worktree", "gating"})
# Event fields the integrator sets itself; a worker's are dropped.
OWN_FIELDS = frozenset({"ts", "kind", "task"})


@dataclass
class _Live:
    request: AttemptRequest
    token: str
    entry: str            # the request's stream entry
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
        self._live: dict[tuple[str, int], _Live] = {}
        self._by_token: dict[str, tuple[str, int]] = {}
        self._phases: list[Phase] = []
        self._ready: list[Outcome] = []     # outcomes of adopted attempts found on the stream, for the next wait
        self._pushed: set[str] = set()
        self._unfetched: list[tuple[Outcome, str]] = []   # outcomes read whose branches are still on the remote
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
        return len(self._live) + len(self._ready)

    def submit(self, request: AttemptRequest) -> None:
        if request.start not in self._pushed:
            gitwire.push_start(self.repo, self.remote, self.run, request.start)
            self._pushed.add(request.start)
        token = p.new_token()
        fields: Any = p.seal(self.key, "request", p.request_body(self.run, token, request, lease=self.lease))
        entry = self._retrying(lambda: self.client.xadd(self.names.requests(self.run), fields))
        self._live[request.key] = _Live(request=request, token=token, entry=_text(entry))
        self._by_token[token] = request.key

    def phases(self) -> list[Phase]:
        out, self._phases = self._phases, []
        return out

    def wait(self, timeout: float) -> list[Outcome]:
        if self._ready:
            ready, self._ready = self._ready, []
            return ready
        return self._retrying(lambda: self._wait(timeout))

    def adopt(self, attempts: list[AttemptRow]) -> set[tuple[str, int]]:
        """Attempts a killed integrator left running are taken over, not started again. Each one's
        request is still on the run's request stream under its token (a reclaimed attempt's request
        was deleted, and with it its token): it is live again under that token. Outcomes that arrived
        meanwhile, read or not by the dead integrator, are found on the outcome stream and handed to
        the next `wait`; the group then reads on from after them, so none is handed over twice."""
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
        listed = self._retrying(lambda: self.client.xrange(outcomes))
        for entry, fields in listed:
            last = entry
            if str(p.peek(fields).get("token")) in self._by_token:
                outcome = self._outcome(fields)
                if outcome is not None:
                    self._ready.append(outcome)
        self._fetch_branches()
        if last is not None:
            self.client.xgroup_setid(outcomes, p.INTEGRATOR_GROUP, last)
        if adopted:
            self.store.event(EventKind.DISTRIBUTED, repository=self.names.repo, remote=self.remote,
                             adopted=sorted(f"{t}#{n}" for t, n in adopted),
                             finished_meanwhile=sorted(f"{o.task.id}#{o.n}" for o in self._ready))
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

    def _wait(self, timeout: float) -> list[Outcome]:
        deadline = time.monotonic() + timeout
        while self._live:
            done = self._reclaim()
            streams: dict[Any, Any] = {self.names.events(self.run): ">", self.names.outcomes(self.run): ">"}
            left = max(1, int((deadline - time.monotonic()) * 1000))
            got: Any = self.client.xreadgroup(p.INTEGRATOR_GROUP, CONSUMER, streams, count=200,
                                              block=min(left, int(self.lease * 500)))
            for stream, entries in got or []:
                for entry, fields in entries:
                    if _text(stream) == self.names.events(self.run):
                        self._event(fields)
                    else:
                        outcome = self._outcome(fields)
                        if outcome is not None:
                            done.append(outcome)
                    self.client.xack(stream, p.INTEGRATOR_GROUP, entry)
            self._fetch_branches()
            if done or time.monotonic() >= deadline:
                return done
        return []

    def tell(self, key: tuple[str, int], item: dict[str, Any]) -> None:
        """ITEM goes to the worker running attempt KEY (signed, under the attempt's token), which posts it
        to that agent's news box; dropped when the attempt has ended or Redis does not answer soon."""
        live = self._live.get(key)
        if live is None:
            return
        fields: Any = p.seal(self.key, "news", p.news_body(self.run, live.token, key, item))
        try:
            retrying(lambda: self.client.xadd(self.names.news(self.run), fields), for_s=5.0)
        except redis.RedisError as exc:
            self.store.event(EventKind.REDIS_UNREACHABLE, key[0], error=f"news not sent: {str(exc)[:200]}")

    def stop(self) -> tuple[list[Outcome], list[BaseException]]:
        """Workers are told to cancel this run's attempts; each ends here as interrupted."""
        self.client.set(self.names.stopped(self.run), "1", ex=24 * 3600)
        outcomes = [self._interrupted(key, "interrupted: the run stopped") for key in list(self._live)]
        return outcomes, []

    def close(self) -> None:
        """The run leaves Redis and the remote: workers stop reading it, its refs there are deleted
        (its task branches are local by now)."""
        self.client.srem(self.names.runs, self.run)
        self.client.delete(self.names.requests(self.run), self.names.outcomes(self.run), self.names.events(self.run),
                           self.names.news(self.run))
        self.client.close()
        try:
            gitwire.delete_run_refs(self.repo, self.remote, self.run)
        except CommandError as exc:
            self.store.event(EventKind.CLEANUP_FAILED, error=f"the run's refs on {self.remote}: {str(exc).splitlines()[0]}")

    # -- what comes back -------------------------------------------------------------------------

    def _event(self, fields: dict[bytes, bytes]) -> None:
        try:
            kind, body = p.unseal_any(self.key, fields, kinds=("event", "phase"))
        except p.Refused as exc:
            self.store.event(EventKind.REMOTE_REFUSED, stream="events", reason=str(exc))
            return
        live = self._current(body)
        if live is None:
            return          # a reclaimed attempt still talking: not this run's business any more
        worker = str(body.get("worker"))
        live.worker = worker
        raw = body.get("fields")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        task = live.request.task.id
        if kind == "phase":
            phase = {k: v for k, v in data.items() if k in PHASE_FIELDS}
            if phase:
                self._phases.append((task, phase))
            return
        event = kind_of(body.get("kind"))
        if event is None:     # not a kind wswarm knows: a worker of another make, or a forged entry
            self.store.event(EventKind.REMOTE_REFUSED, stream="events", reason=f"unknown event kind {body.get('kind')!r}",
                             worker=worker)
            return
        extra = {k: v for k, v in data.items() if k not in OWN_FIELDS}
        extra["worker"] = worker
        self.store.event(event, task, **extra)

    def _outcome(self, fields: dict[bytes, bytes]) -> Outcome | None:
        try:
            body = p.unseal(self.key, fields, kind="outcome")
        except p.Refused as exc:
            self.store.event(EventKind.REMOTE_REFUSED, stream="outcomes", reason=str(exc))
            return None
        live = self._current(body)
        if live is None:
            self.store.event(EventKind.REMOTE_RESULT_REJECTED, body.get("task") if isinstance(body.get("task"), str) else None,
                             attempt=body.get("n"), worker=body.get("worker"),
                             reason="its attempt was taken back and handed out again, or already settled")
            return None
        key = live.request.key
        if body.get("refused"):
            out = Outcome(task=live.request.task, n=live.request.n, kind="error", branch=live.request.branch,
                          start=live.request.start, reason=str(body.get("reason")))
        else:
            try:
                out = p.parse_outcome(body, live.request.task)
            except p.Refused as exc:
                out = Outcome(task=live.request.task, n=live.request.n, kind="error", branch=live.request.branch,
                              start=live.request.start, reason=f"worker {body.get('worker')}: {exc}")
        self._forget(key)
        out.branch, out.start, out.worktree = live.request.branch, live.request.start, None
        self._collect(out, str(body.get("worker")), str(body.get("log") or ""))
        return out

    def _collect(self, out: Outcome, worker: str, log: str) -> None:
        """The attempt's files, here: its log and verdict; its branch is fetched by `_fetch_branches`."""
        adir = self.store.attempt_dir(out.task.id, out.n)
        if log:
            (adir / layout.AGENT_LOG).write_text(log, encoding="utf-8")
        if out.report is not None:
            (adir / "gate.json").write_text(out.report.to_json(), encoding="utf-8")
        if out.head is not None:
            self._unfetched.append((out, worker))

    def _fetch_branches(self) -> None:
        """The branches of the outcomes just read, at their reported heads, in one fetch: under load
        outcomes come in batches, and a fetch per outcome would bound the merges per second. An
        outcome whose branch does not arrive at its head becomes an error."""
        batch, self._unfetched = self._unfetched, []
        if not batch:
            return
        errors = gitwire.fetch_tasks(self.repo, self.remote, self.run,
                                     [(o.task.id, o.n, o.branch, Sha(str(o.head))) for o, _ in batch])
        for (out, worker), error in zip(batch, errors):
            if error is not None:
                out.kind = "error"
                out.reason = f"could not fetch the task branch from worker {worker}: {error}"
                out.feedback, out.report = "", None

    def _current(self, body: dict[str, Any]) -> _Live | None:
        """The live attempt BODY speaks for: its token is the one that attempt was given, and the run is ours."""
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
        by_entry = {live.entry: key for key, live in self._live.items()}
        out = []
        for entry in claimed:
            key = by_entry.get(entry)
            if key is None:
                continue
            worker = self._live[key].worker or "unknown"
            reason = f"interrupted: worker {worker} sent no heartbeat for {self.lease:g}s; its attempt was taken back"
            self.store.event(EventKind.ATTEMPT_RECLAIMED, key[0], attempt=key[1], worker=worker, reason=reason)
            out.append(self._interrupted(key, reason))
        return out

    def _interrupted(self, key: tuple[str, int], reason: str) -> Outcome:
        live = self._live[key]
        self._forget(key)
        self.client.xdel(self.names.requests(self.run), live.entry)
        return Outcome(task=live.request.task, n=live.request.n, kind="interrupted",
                       branch=BranchName(live.request.branch), start=live.request.start, reason=reason)

    def _forget(self, key: tuple[str, int]) -> None:
        live = self._live.pop(key)
        self._by_token.pop(live.token, None)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

