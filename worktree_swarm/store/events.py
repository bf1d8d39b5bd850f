"""Every kind of event a run's log holds: one name, spelled once.

The log (events.jsonl) is what the live view, `status --watch`, the dashboard and the figures read;
docs/dashboard.md lists every kind (a test holds the two together).
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    # the run
    RUN_STARTED = "run-started"
    RUN_RESUMED = "run-resumed"
    RUN_RETRIED = "run-retried"
    RUN_INTERRUPTED = "run-interrupted"
    RUN_STOPPED = "run-stopped"
    RUN_FINISHED = "run-finished"
    PLANNED = "planned"
    SPENDING_LIMIT = "spending-limit"
    WAITING_FOR_RESOURCES = "waiting-for-resources"
    RESOURCES_AVAILABLE = "resources-available"
    CLEANUP_FAILED = "cleanup-failed"
    BASE_FAILING = "base-failing"
    # an attempt
    ATTEMPT_STARTED = "attempt-started"
    SETUP_SKIPPED = "setup-skipped"
    AGENT_STARTED = "agent-started"
    AGENT_ACTIVITY = "agent-activity"
    AGENT_FINISHED = "agent-finished"
    LEFTOVERS_EXCLUDED = "leftovers-excluded"
    GATE_STARTED = "gate-started"
    GATE_FINISHED = "gate-finished"
    NEWS = "news"
    CONFLICT_FORECAST = "conflict-forecast"
    CONFLICT_FORECAST_CLEARED = "conflict-forecast-cleared"
    RESTARTED = "restarted"
    # how an attempt ended, and what follows for its task
    MERGED = "merged"
    CONFLICT = "conflict"
    GATE_FAILED = "gate-failed"
    AGENT_FAILED = "agent-failed"
    TIMEOUT = "timeout"
    NO_OP = "no-op"
    ERROR = "error"
    REQUEUED = "requeued"
    HELD = "held"
    FAILED = "failed"
    BLOCKED = "blocked"
    EJECTED = "ejected"
    MERGE_RECOVERED = "merge-recovered"
    # the merge result and the integration branch
    MERGE_GATE_STARTED = "merge-gate-started"
    MERGE_GATE_PASSED = "merge-gate-passed"
    MERGE_GATE_FAILED = "merge-gate-failed"
    MERGE_GATE_UNVERIFIED = "merge-gate-unverified"
    INTEGRATION_MOVED = "integration-moved"
    INTEGRATION_RESTORED = "integration-restored"
    INTEGRATION_RECOVERED = "integration-recovered"
    SHARED_STATE_CHANGED = "shared-state-changed"
    # workers on other machines
    DISTRIBUTED = "distributed"
    REDIS_UNREACHABLE = "redis-unreachable"
    REMOTE_REFUSED = "remote-refused"
    REMOTE_RESULT_REJECTED = "remote-result-rejected"
    ATTEMPT_RECLAIMED = "attempt-reclaimed"
    ATTEMPT_ASSIGNED = "attempt-assigned"


def kind_of(name: object) -> EventKind | None:
    """NAME as an event kind, or None when no event has that name (e.g. one a worker sent)."""
    try:
        return EventKind(str(name))
    except ValueError:
        return None
