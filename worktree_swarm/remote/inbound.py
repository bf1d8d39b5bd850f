"""What comes back from workers, read by the integrator's reader thread: each outcome as the loop's
`Outcome`, its files kept here, its branch brought here (from the objects the outcome carried, or
fetched from the remote), and the events a worker reports put in the run's event log. No state of the
executor's: it decides which attempt a message speaks for, these functions what the message says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worktree_swarm.git.repo import Repo
from worktree_swarm.remote import gitwire
from worktree_swarm.remote import protocol as p
from worktree_swarm.remote.protocol import task_ref
from worktree_swarm.store import layout
from worktree_swarm.store.events import EventKind, kind_of
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import AttemptRequest
from worktree_swarm.util import proc
from worktree_swarm.util.types import Sha

# Fields a worker may set on a task row; anything else it says about a phase is ignored.
PHASE_FIELDS = frozenset({"worktree", "gating"})
# Event fields the integrator sets itself; a worker's are dropped.
OWN_FIELDS = frozenset({"ts", "kind", "task"})


@dataclass
class Found:
    """An outcome read for a live attempt, before its branch is here."""

    out: Outcome
    worker: str
    objects: str | None      # its branch's objects, when the outcome carried them
    error: str | None = None  # why its branch did not arrive


def found(store: RunStore, body: dict[str, Any], request: AttemptRequest) -> Found:
    """What outcome BODY, from the worker that ran REQUEST, reports: as the loop's Outcome (an error
    when the worker refused the request or the body is malformed), with the attempt's log and verdict
    kept here. The branch and start are the request's own, whatever the body says."""
    worker = str(body.get("worker"))
    if body.get("refused"):
        out = Outcome(task=request.task, n=request.n, kind="error", branch=request.branch, start=request.start,
                      reason=str(body.get("reason")))
    else:
        try:
            out = p.parse_outcome(body, request.task)
        except p.Refused as exc:
            out = Outcome(task=request.task, n=request.n, kind="error", branch=request.branch,
                          start=request.start, reason=f"worker {worker}: {exc}")
    out.branch, out.start, out.worktree = request.branch, request.start, None
    adir = store.attempt_dir(out.task.id, out.n)
    log = str(body.get("log") or "")
    if log:
        proc.write_new(adir / layout.AGENT_LOG, log.encode("utf-8", errors="replace"))
    if out.report is not None:
        proc.write_new(adir / "gate.json", out.report.to_json().encode("utf-8"))
    return Found(out, worker, p.outcome_objects(body))


def bring_branches(repo: Repo, remote: str, run: str, batch: list[Found]) -> list[str]:
    """The branches of the outcomes of BATCH, at their reported heads: written from the objects an
    outcome carried, the others in one fetch (under load outcomes come in batches, and a fetch each
    would bound the merges per second). One whose branch does not arrive whole at its head becomes an
    error. The remote's refs fetched, which it no longer needs."""
    carried = [f for f in batch if f.out.head is not None and f.objects is not None]
    if carried:
        errors = gitwire.write_branches(repo, [(f.out.branch, Sha(str(f.out.head)), f.out.start, str(f.objects))
                                               for f in carried])
        for f, error in zip(carried, errors):
            f.error = error
    fetching = [f for f in batch if f.out.head is not None and f.objects is None]
    if fetching:
        errors = gitwire.fetch_tasks(repo, remote, run,
                                     [(f.out.task.id, f.out.n, f.out.branch, Sha(str(f.out.head))) for f in fetching])
        for f, error in zip(fetching, errors):
            f.error = error
    for f in batch:
        if f.error is not None:
            f.out.kind = "error"
            f.out.reason = f"the task branch from worker {f.worker} did not arrive: {f.error}"
            f.out.feedback, f.out.report = "", None
    return [task_ref(run, f.out.task.id, f.out.n) for f in fetching if f.error is None]


def phase(body: dict[str, Any]) -> dict[str, Any]:
    """What a worker's phase message BODY may set on its task's row."""
    return {k: v for k, v in _fields(body).items() if k in PHASE_FIELDS}


def record_event(store: RunStore, body: dict[str, Any], task: str, worker: str) -> None:
    """A worker's event BODY about TASK into the run's event log, with its worker's name; one of a kind
    wswarm does not know is refused there."""
    event = kind_of(body.get("kind"))
    if event is None:     # not a kind wswarm knows: a worker of another make, or a forged entry
        store.event(EventKind.REMOTE_REFUSED, stream="events", reason=f"unknown event kind {body.get('kind')!r}",
                    worker=worker)
        return
    extra = {k: v for k, v in _fields(body).items() if k not in OWN_FIELDS}
    extra["worker"] = worker
    store.event(event, task, **extra)


def _fields(body: dict[str, Any]) -> dict[str, Any]:
    raw = body.get("fields")
    return raw if isinstance(raw, dict) else {}
