"""One readable line per event, shared by the plain progress lines, the terminal grid and the web
activity stream.

Events carry agents' words (activity, errors, reasons): a line break in them would let an agent
print a line that looks like another event, so every value is flattened to one line without
control characters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worktree_swarm.util.textsafe import one_line

_HIDDEN = ("ts", "kind", "task", "log", "run", "messages")


def short(value: object) -> str:
    """Commit ids cut to 12 characters, lists joined: one event stays one readable line."""
    if isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    if isinstance(value, list):
        return one_line(",".join(str(v) for v in value))
    if isinstance(value, float):
        return f"{value:g}"
    return one_line(str(value))


def details(event: dict[str, Any]) -> str:
    """Every field but the envelope, as k=v."""
    return " ".join(f"{k}={short(v)}" for k, v in event.items() if k not in _HIDDEN and v is not None)


def describe(event: dict[str, Any]) -> str:
    """What happened, in words and on one line, without the time and the task id (shown beside it)."""
    return one_line(_describe(event))


def _describe(event: dict[str, Any]) -> str:
    kind = str(event.get("kind"))
    n = event.get("attempt")
    at = f" (attempt {n})" if n else ""
    files = ", ".join(str(f) for f in event.get("files") or [])
    if kind == "agent-activity":
        return str(event.get("text") or "")
    if kind == "attempt-started":
        return f"attempt {n} started from {short(event.get('start') or '')}"
    if kind == "agent-started":
        return f"{event.get('agent') or 'agent'} agent started{at}"
    if kind == "agent-finished":
        cost = f", ${float(event['cost_usd']):.4f}" if event.get("cost_usd") else ""
        verdict = "finished" if event.get("ok") else f"failed: {event.get('error') or 'exit ' + str(event.get('exit_code'))}"
        return f"{event.get('agent') or 'agent'} agent {verdict}{cost}"
    if kind == "gate-started":
        return "gate started" + (f" on {files}" if files else "")
    if kind == "gate-finished":
        return str(event.get("summary") or f"gate {event.get('verdict')}")
    if kind == "merged":
        return f"merged as {short(event.get('commit') or '')}" + (f": {files}" if files else "") + \
            (" (recovered)" if event.get("recovered") else "")
    if kind == "conflict":
        return f"merge conflict in {files}{at}"
    if kind == "conflict-forecast":
        return f"conflict forecast with {event.get('other')}: {files}"
    if kind == "conflict-forecast-cleared":
        return f"conflict forecast with {event.get('other')} cleared"
    if kind == "restarted":
        return f"restarted from the new head: its work conflicted with merged work in {files}"
    if kind == "news":
        return f"told that {event.get('about')} merged (head {short(event.get('head') or '')})"
    if kind == "held":
        return f"held: waiting for {event.get('waiting_for')}: {event.get('reason') or ''}".rstrip(": ")
    if kind == "leftovers-excluded":
        return f"not committed (generated files): {files}"
    if kind in ("requeued", "failed", "blocked", "ejected", "gate-failed", "agent-failed", "timeout", "no-op",
                "error"):
        label = {"requeued": "re-queued", "gate-failed": "gate failed", "agent-failed": "agent failed",
                 "no-op": "no-op"}.get(kind, kind)
        reason = str(event.get("reason") or "")
        return f"{label}: {reason}" if reason and not reason.startswith(label) else (reason or label)
    if kind == "run-started":
        return f"run started: {event.get('tasks')} tasks on {event.get('branch')}"
    if kind == "run-finished":
        return "run finished: " + ("every task merged" if event.get("all_merged") else "some tasks failed or blocked")
    if kind == "run-interrupted":
        return "run interrupted; wswarm resume continues"
    if kind == "run-resumed":
        return "run resumed"
    if kind == "base-failing":
        return base_failing_text(event)
    if kind == "run-retried":
        overrides = event.get("overrides") or {}
        given = ", ".join(f"--{k.replace('_', '-')} {short(v)}" for k, v in overrides.items())
        return f"run retried: {short(event.get('tasks') or [])}" + (f" ({given})" if given else "")
    if kind == "planned":
        cost = f" for ${float(event['cost_usd']):.4f}" if event.get("cost_usd") else ""
        return f"planned by {event.get('model') or 'the model'}{cost}"
    if kind == "waiting-for-resources":
        return f"waiting for resources: {event.get('reason') or event.get('limit') or ''}".rstrip(": ")
    if kind == "resources-available":
        return "resources available again"
    if kind == "shared-state-changed":
        return f"shared git state changed: {event.get('detail') or ''}".rstrip(": ")
    if kind == "spending-limit":
        return (f"spending limit reached: ${float(event.get('spent_usd') or 0):.2f} of "
                f"${float(event.get('max_cost_usd') or 0):.2f}; no new attempts")
    if kind.startswith("merge-gate"):
        verdict = kind.removeprefix("merge-gate-")
        guilty = f"; ejecting {event['guilty']}" if event.get("guilty") else ""
        return f"merge-result gate {verdict} on {short(event.get('commit') or '')}{guilty}"
    return f"{kind} {details(event)}".strip()


def base_failing_text(event: Mapping[str, Any]) -> str:
    """The one line a `base-failing` event is told as (the live view, the PR body's warnings)."""
    n = int(event.get("failures") or 0)
    check, commit = str(event.get("check")), str(event.get("commit") or "")[:12]
    text = (f"the {'detected ' if event.get('detected') else ''}check {check} fails on the base itself "
            f"({commit}, {n} failure{'' if n == 1 else 's'}): tasks are judged only on failures beyond those")
    if event.get("detected"):
        text += "; configure it in [[gate.checks]] (wswarm.toml) to run it the way the project needs"
    return text
