"""What the loop does about a round of conflict forecasts: the forecasts raised and cleared (as events),
the agents told of the conflict they head for, and (on_forecast = restart) the attempts stopped to
start again from a head that holds the other work."""

from __future__ import annotations

import time
from collections.abc import Mapping

from worktree_swarm.config import SchedulerConfig
from worktree_swarm.store.events import EventKind
from worktree_swarm.store.run_store import RunStore
from worktree_swarm.swarm import briefing
from worktree_swarm.swarm.executor import Executor
from worktree_swarm.swarm.forecast import Forecast, Round
from worktree_swarm.swarm.scheduler import Scheduler, TaskStatus

Key = tuple[str, int]      # (task, attempt)


class ForecastReply:
    """The standing forecasts and the attempts stopped to start again (orchestrator thread only)."""

    def __init__(self, *, store: RunStore, executor: Executor, sched: Scheduler, settings: SchedulerConfig,
                 agent_timeout: float) -> None:
        self.store = store
        self.executor = executor
        self.sched = sched
        self.settings = settings
        self.agent_timeout = agent_timeout
        self._forecasts: dict[tuple[str, int, str], Forecast] = {}   # (task, attempt, other) -> standing forecast
        self.restarting: dict[Key, tuple[str, tuple[str, ...]]] = {}  # stopped to start again: with, where

    def take(self, latest: Round | None, *, live: set[Key], launched: Mapping[Key, float]) -> None:
        """The newest round of forecasts (LIVE: the attempts running; LAUNCHED: when each started): what
        running attempts have changed so far (so the scheduler knows their files), and the conflicts
        their work would meet, raised and cleared."""
        if latest is None:
            return
        for (task_id, n), paths in latest.touched.items():
            if (task_id, n) in live:
                self.sched.learn(task_id, paths)
        now = {(f.key[0], f.key[1], f.other): f for f in latest.forecasts if f.key in live}
        for key, f in now.items():
            if key in self._forecasts and self._forecasts[key].paths == f.paths:
                continue
            other = f.other or "integration head"
            self.store.event(EventKind.CONFLICT_FORECAST, f.key[0], attempt=f.key[1], other=other, files=list(f.paths),
                             messages=list(f.messages), head=latest.head)
            if self._restart(f, live=live, launched=launched):
                continue
            if self.settings.on_forecast in ("notify", "restart"):
                self.executor.tell(f.key, {"message": briefing.forecast_text(f, latest.head)})
        for key, f in self._forecasts.items():
            if key not in now and f.key in live:
                self.store.event(EventKind.CONFLICT_FORECAST_CLEARED, f.key[0], attempt=f.key[1],
                                 other=f.other or "integration head")
        self._forecasts = now

    def _restart(self, f: Forecast, *, live: set[Key], launched: Mapping[Key, float]) -> bool:
        """on_forecast = restart: an attempt heading for a conflict, young enough (under restart_share of its
        timeout), is stopped, not charged. One heading for work already merged starts again from the new
        head at once; of two running attempts heading for each other, the younger is stopped and waits for
        the other to settle, then starts from the head that holds its work. A task is restarted at most
        MAX_RESTARTS times; after that it is told, as with notify."""
        settings = self.settings
        task_id, _ = f.key
        started = launched.get(f.key, 0.0)
        if settings.on_forecast != "restart" or f.key in self.restarting:
            return False
        if f.other:
            mate = next((key for key in live if key[0] == f.other), None)
            if mate is None or launched.get(mate, 0.0) > started or mate in self.restarting:
                return False        # the other one is the younger: it is the one to stop
        young = time.monotonic() - started < settings.restart_share * self.agent_timeout
        if (not young or self.sched.status(task_id) != TaskStatus.RUNNING or not self.sched.may_restart(task_id)
                or not self.executor.restart(f.key)):
            return False
        self.sched.restarted(task_id)
        self.restarting[f.key] = (f.other, f.paths)
        return True
