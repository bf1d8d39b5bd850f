"""What integrator and workers say to each other, and how it is named: pure, no I/O.

Every message is one stream entry with two fields: `msg`, the canonical JSON of
{kind, version, body}, and `sig`, its HMAC-SHA256 under the cluster key. Anyone who can write to
Redis could otherwise make workers run commands, so an entry without a valid signature is refused,
whatever it says; a signed one from another version of wswarm is refused naming both versions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worktree_swarm import __version__
from worktree_swarm.gate.report import GateReport
from worktree_swarm.git.diff import FileChange
from worktree_swarm.git.refs import encode
from worktree_swarm.plan import Task
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import AttemptRequest
from worktree_swarm.util.errors import UsageError
from worktree_swarm.util.types import BranchName, Sha, TaskId, is_full_id

# 2: a request may carry its start commit's objects, and come before that commit's push.
# 3: an outcome may carry its branch's objects (beyond its start's), and then its branch is not pushed;
#    a start whose objects went inline is pushed only when a worker asks ("need").
PROTOCOL = 4
VERSION = f"{__version__}/protocol-{PROTOCOL}"
KEY_ENV = "WSWARM_CLUSTER_KEY"
MIN_KEY_LENGTH = 16


WORKER_GROUP = "workers"          # the consumer group workers read requests with
INTEGRATOR_GROUP = "integrator"   # the one the integrator reads outcomes and events with

# How an attempt can end on a worker (what a merge, a conflict or an ejection is, the integrator decides).
REMOTE_KINDS = frozenset({"gated", "gate-failed", "agent-failed", "timeout", "no-op", "interrupted", "error"})


class Refused(Exception):
    """An entry that is not acted on: unsigned, tampered, malformed or from another version."""


class VersionSkew(Refused):
    """A signed entry from another version of wswarm: refused, and its sender can be told why."""


def cluster_key(environ: Mapping[str, str]) -> bytes:
    """The shared key both sides sign with; a clear refusal when it is missing or too short to matter."""
    key = environ.get(KEY_ENV, "")
    if len(key) < MIN_KEY_LENGTH:
        what = "is not set" if not key else f"is shorter than {MIN_KEY_LENGTH} characters"
        raise UsageError(f"{KEY_ENV} {what}: integrator and workers sign their messages with it",
                         hint=f'set the same secret on every machine, e.g. export {KEY_ENV}="$(openssl rand -hex 32)"')
    return key.encode()


def new_token() -> str:
    """The attempt token: which delivery of an attempt a result belongs to (fencing)."""
    return secrets.token_hex(16)


# -- names ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Names:
    """Keys of one repository's streams. REPO is `repository_id`: the same on every clone."""

    repo: str

    @property
    def runs(self) -> str:
        """A set: the runs whose request streams workers read."""
        return f"wswarm:{self.repo}:runs"

    @property
    def opened(self) -> str:
        """A stream with an entry per run opened: idle workers block on it instead of polling `runs`.
        Its entries only wake them; what they run still comes signed on the run's request stream."""
        return f"wswarm:{self.repo}:opened"

    def requests(self, run: str) -> str:
        return f"wswarm:{self.repo}:run:{run}:requests"

    def outcomes(self, run: str) -> str:
        return f"wswarm:{self.repo}:run:{run}:outcomes"

    def events(self, run: str) -> str:
        return f"wswarm:{self.repo}:run:{run}:events"

    def news(self, run: str) -> str:
        """Word for running attempts (work merged meanwhile), each item addressed by its attempt's token."""
        return f"wswarm:{self.repo}:run:{run}:news"

    def stopped(self, run: str) -> str:
        """Set while a run is stopped: workers cancel its attempts still running."""
        return f"wswarm:{self.repo}:run:{run}:stopped"

    def of_run(self, run: str) -> list[str]:
        return [self.requests(run), self.outcomes(run), self.events(run), self.news(run), self.stopped(run)]


WORKER_PREFIX = "wswarm:worker:"


def worker_key(name: str) -> str:
    """A hash a worker keeps fresh while it lives (it expires when it stops): `wswarm workers` reads it."""
    return WORKER_PREFIX + name


def repository_id(roots: list[str]) -> str:
    """One repository's name on every machine: its first root commit (clones differ in URL, not in history)."""
    if not roots:
        raise ValueError("a repository without commits")
    return sorted(roots)[0][:20]


def start_ref(run: str, sha: str) -> str:
    """Where the integrator puts an attempt's start commit on the remote (never under refs/heads)."""
    return f"refs/wswarm/{run}/start/{sha}"


def task_ref(run: str, task_id: str, n: int) -> str:
    """Where a worker pushes attempt N's branch on the remote."""
    return f"refs/wswarm/{run}/tasks/{encode(task_id)}/{n}"


def run_refs(run: str) -> str:
    return f"refs/wswarm/{run}/"


# -- sealing ---------------------------------------------------------------------------------------

def seal(key: bytes, kind: str, body: Mapping[str, Any]) -> dict[str, str]:
    """The stream entry for one message: canonical JSON and its signature."""
    msg = json.dumps({"kind": kind, "version": VERSION, "body": body}, sort_keys=True, separators=(",", ":"),
                     ensure_ascii=False, default=str)
    return {"msg": msg, "sig": _sign(key, msg)}


def _sign(key: bytes, msg: str) -> str:
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


def unseal(key: bytes, fields: Mapping[Any, Any], *, kind: str) -> dict[str, Any]:
    """The body of a signed message of KIND; `Refused` saying why otherwise. A version skew is
    refused only after the signature is checked, so the refusal names versions a keyholder sent."""
    return unseal_any(key, fields, kinds=(kind,))[1]


def unseal_any(key: bytes, fields: Mapping[Any, Any], *, kinds: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The kind (one of KINDS) and body of a signed message; `Refused` otherwise."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    msg, sig = text.get("msg"), text.get("sig")
    if msg is None or not sig:
        raise Refused("unsigned message")
    if not hmac.compare_digest(_sign(key, msg), sig):
        raise Refused("bad signature (tampered, or signed with another cluster key)")
    try:
        data = json.loads(msg)
    except json.JSONDecodeError as exc:
        raise Refused(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("body"), dict):
        raise Refused("malformed message")
    if data.get("version") != VERSION:
        raise VersionSkew(f"version skew: the sender runs wswarm {data.get('version')}, this machine {VERSION}")
    if data.get("kind") not in kinds:
        raise Refused(f"expected a {' or '.join(kinds)} message, got {data.get('kind')!r}")
    body: dict[str, Any] = data["body"]
    return str(data["kind"]), body


def peek(fields: Mapping[Any, Any]) -> dict[str, Any]:
    """The body of an entry without trusting it: only to address a refusal to whoever sent it."""
    try:
        text = {_text(k): _text(v) for k, v in fields.items()}
        data = json.loads(text.get("msg", "{}"))
        body = data.get("body") if isinstance(data, dict) else None
        return body if isinstance(body, dict) else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


# -- requests ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Assignment:
    """An attempt request as a worker receives it: which run, which delivery, what to do."""

    run: str
    token: str
    request: AttemptRequest
    lease: float = 30.0     # seconds the integrator waits for a heartbeat before taking the attempt back
    objects: tuple[str, str] | None = None   # (base, payload): the start commit's objects beyond base's


def request_body(run: str, token: str, request: AttemptRequest, *, lease: float = 30.0,
                 objects: tuple[str, str] | None = None) -> dict[str, Any]:
    body = {"run": run, "token": token, "lease": lease, "task": request.task.to_dict(), "n": request.n,
            "branch": request.branch, "start": request.start, "feedback": request.feedback, "env": request.env,
            "dependencies": request.dependencies}
    if objects is not None:
        body["objects"] = {"base": objects[0], "data": objects[1]}
    return body


def parse_request(body: Mapping[str, Any]) -> Assignment:
    """The assignment a request body carries; `Refused` when a field is missing or of the wrong type."""
    try:
        task = task_from_dict(body["task"])
        n, env = body["n"], body["env"]
        if not isinstance(n, int) or n < 1 or not isinstance(env, dict):
            raise TypeError("n or env")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise TypeError("env")
        feedback = body.get("feedback")
        deps = body.get("dependencies") or []
        if not isinstance(deps, list) or (feedback is not None and not isinstance(feedback, str)):
            raise TypeError("feedback or dependencies")
        request = AttemptRequest(task=task, n=n, branch=BranchName(_str(body, "branch")), start=Sha(_str(body, "start")),
                                 feedback=feedback, env=dict(env), dependencies=deps)
        lease = float(body.get("lease") or 30.0)
        if not 0.5 <= lease <= 86400:
            raise ValueError("lease")
        inline = body.get("objects")
        objects = None
        if isinstance(inline, dict) and isinstance(inline.get("base"), str) and isinstance(inline.get("data"), str):
            objects = (inline["base"], inline["data"])
        return Assignment(run=_str(body, "run"), token=_str(body, "token"), request=request, lease=lease,
                          objects=objects)
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"malformed request ({exc})") from None


def task_from_dict(data: object) -> Task:
    if not isinstance(data, dict):
        raise TypeError("task")
    strs = lambda name: tuple(str(x) for x in data.get(name) or ())  # noqa: E731
    opt = lambda name: None if data.get(name) is None else str(data[name])  # noqa: E731
    return Task(id=TaskId(_str(data, "id")), type=_str(data, "type"), description=_str(data, "description"),
                dependencies=tuple(TaskId(d) for d in strs("dependencies")), files=strs("files"),
                command=opt("command"), agent=opt("agent"), prompt=opt("prompt"))


def _str(data: Mapping[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str):
        raise TypeError(name)
    return value


# -- outcomes and events ---------------------------------------------------------------------------

def outcome_body(run: str, token: str, worker: str, out: Outcome, *, log_tail: str = "",
                 objects: str | None = None) -> dict[str, Any]:
    """OBJECTS: the branch head's objects beyond the start commit's (`inline.objects_since`), when
    they fit: then the branch was not pushed, and the integrator writes them instead of fetching."""
    body = {"run": run, "token": token, "worker": worker, "task": out.task.id, "n": out.n, "kind": out.kind,
            "branch": out.branch, "start": out.start, "head": out.head, "reason": out.reason,
            "feedback": out.feedback, "summary": out.summary,
            "report": out.report.to_json() if out.report is not None else None,
            "cost_usd": out.cost_usd, "usage": out.usage, "log": log_tail,
            "changes": [[c.path, c.added, c.removed, c.old_path] for c in out.changes]}
    if objects is not None:
        body["objects"] = objects
    return body


def outcome_objects(body: Mapping[str, Any]) -> str | None:
    """The objects an outcome BODY carries for its branch (`outcome_body`), or None."""
    objects = body.get("objects")
    return objects if isinstance(objects, str) else None


class WorkerCrash(Exception):
    """wswarm itself failed on a worker while running an attempt: a bug, not the task's doing. It stops
    the run (its traceback goes to the crash log), as a bug does in a local run, instead of costing the
    task an attempt."""


def parse_outcome(body: Mapping[str, Any], task: Task) -> Outcome:
    """The Outcome a worker reported for TASK (the integrator's own copy of it, not the message's).
    A worker's report of its own crash raises WorkerCrash."""
    if body.get("crash"):
        raise WorkerCrash(f"wswarm crashed on worker {body.get('worker')} running attempt {task.id}#{body.get('n')}:\n"
                          f"{body['crash']}")
    try:
        kind = _str(body, "kind")
        if kind not in REMOTE_KINDS:
            raise ValueError(f"kind {kind!r}")
        head = body.get("head")
        if head is not None and not (isinstance(head, str) and is_full_id(head)):
            raise ValueError(f"head {head!r} is not a full commit id")
        report = body.get("report")
        usage = body.get("usage") or {}
        if not isinstance(usage, dict):
            raise TypeError("usage")
        changes = [FileChange(str(p), _count(a), _count(r), None if old is None else str(old))
                   for p, a, r, old in body.get("changes") or []]
        return Outcome(task=task, n=int(body["n"]), kind=kind, branch=BranchName(_str(body, "branch")),
                       start=Sha(_str(body, "start")), head=None if head is None else Sha(str(head)),
                       reason=str(body.get("reason") or ""), feedback=str(body.get("feedback") or ""),
                       summary=str(body.get("summary") or ""),
                       report=None if report is None else GateReport.from_json(str(report)),
                       cost_usd=float(body.get("cost_usd") or 0.0), usage=usage, changes=changes)
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"malformed outcome ({exc})") from None


def _count(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def event_body(run: str, token: str, worker: str, kind: str, task: str | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"run": run, "token": token, "worker": worker, "kind": kind, "task": task, "fields": dict(fields)}


def news_body(run: str, token: str, key: tuple[str, int], item: Mapping[str, Any]) -> dict[str, Any]:
    return {"run": run, "token": token, "task": key[0], "n": key[1], "item": dict(item)}


def need_body(run: str, token: str, worker: str, start: str) -> dict[str, Any]:
    """A worker asks for the start commit of the attempt under TOKEN on the remote (its request's
    objects did not fit this clone)."""
    return {"run": run, "token": token, "worker": worker, "start": start}


def phase_body(run: str, token: str, worker: str, task: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {"run": run, "token": token, "worker": worker, "task": task, "fields": dict(fields)}
