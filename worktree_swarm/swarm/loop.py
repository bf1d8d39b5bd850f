"""The orchestrator: ready tasks -> agents in worktrees -> gate -> merge train -> re-queue or done.

One orchestrator thread carries out what the scheduler (scheduler.py) decides, writes every task
and attempt row, and alone moves the integration branch (through merge.Integration); worker threads
only run an attempt (agent, commit, gate), emit events, and hand back its outcome.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from worktree_swarm.agents.base import Agent
from worktree_swarm.util import proc
from worktree_swarm.swarm.attempt import Outcome
from worktree_swarm.swarm.executor import AttemptRequest, Executor
from worktree_swarm.swarm import briefing, recovery
from worktree_swarm.swarm.forecast import Forecaster
from worktree_swarm.swarm.forecast_reply import ForecastReply
from worktree_swarm.swarm.shared_state import SharedStateWatch
from worktree_swarm.config import Config
from worktree_swarm.util.redact import redact_secrets, secret_env_values
from worktree_swarm.gate.cache import GateCache
from worktree_swarm.gate.probe import Prober
from worktree_swarm.git.refs import run_prefix, task_branch
from worktree_swarm.git.repo import Repo
from worktree_swarm.swarm.guard import Guard
from worktree_swarm.train.integration import Integration, TrainResult, merge_message
from worktree_swarm.train.result_gate import judge
from worktree_swarm.plan import Plan, Task
from worktree_swarm.sandbox import Confinement
from worktree_swarm.swarm.scheduler import AttemptKind, Decision, Overlap, Scheduler, TaskStatus
from worktree_swarm.store.run_store import AttemptRow, RunStore
from worktree_swarm.util.types import BranchName, RunId, Sha
from worktree_swarm.store import layout
from worktree_swarm.store.events import EventKind



@dataclass(frozen=True)
class SwarmOptions:
    agents: int
    max_attempts: int
    agent_timeout: float
    max_cost: float | None = None   # USD; once spent, no new attempt starts


@dataclass
class _TaskData:
    """What the orchestrator keeps about a task beside its scheduling state."""

    feedback: str | None = None
    summary: str = ""
    files: list[str] = field(default_factory=list)


class Swarm:
    def __init__(self, *, repo: Repo, config: Config, plan: Plan, store: RunStore, executor: Executor,
                 agent_for: Callable[[Task], Agent], options: SwarmOptions, pool_root: Path,
                 confinement: Confinement, cache: GateCache) -> None:
        self.repo = repo
        self.config = config
        self.plan = plan
        self.store = store
        self.executor = executor
        self.agent_for = agent_for
        self.options = options
        run = store.run()
        self.run_id = RunId(run.id)
        self.integration = BranchName(run.integration_branch)
        # The one owner of the integration branch: it moves only from the head this run recorded.
        self.train = Integration(repo, store)
        for note in self.train.recover():
            store.event(EventKind.INTEGRATION_RECOVERED, detail=note)
        self.cancel = threading.Event()
        self.pool_root = pool_root
        self.merge_gate: str | None = None     # passed | failed | unverified, once judged
        self._ports: dict[tuple[str, int], int] = {}
        self._spent_announced = False
        self.watch = SharedStateWatch(Guard(repo, own=f"refs/heads/{run_prefix(self.run_id)}"), store)
        self._live: set[tuple[str, int]] = set()       # attempts running now
        self.confinement = confinement
        self.cache = cache
        self.secret_values = secret_env_values(os.environ)
        declared = {str(t.id): list(t.files) for t in plan if t.files}
        self.sched = Scheduler(order=[str(t) for t in plan.ids()],
                               dependencies={t.id: [str(d) for d in t.dependencies] for t in plan},
                               priority={str(k): v for k, v in plan.priority().items()},
                               max_attempts=options.max_attempts, files=declared,
                               # whether two declared patterns can match one path is judged on the base's files
                               tracked=repo.tracked_files(Sha(run.base)) if declared else (),
                               overlap=Overlap(config.scheduler.overlap),
                               retry_wait=config.scheduler.retry_wait or options.agent_timeout)
        self._held: dict[str, tuple[str, str]] = {}    # task -> (waiting for, why), as last announced
        self.forecasts = ForecastReply(store=store, executor=executor, sched=self.sched, settings=config.scheduler,
                                       agent_timeout=options.agent_timeout)
        self._launched: dict[tuple[str, int], float] = {}              # when each running attempt started
        self._stopping = False          # the run is stopping: interrupted attempts are not restarts
        self.data: dict[str, _TaskData] = {str(t): _TaskData() for t in plan.ids()}
        self._recovered: list[AttemptRow] = []   # gated before a crash, merged first thing on resume
        self._load_state()

    # -- state ---------------------------------------------------------------------------------

    def _load_state(self) -> None:
        """Rebuild the in-memory picture from the store (`recovery.restore_state`)."""
        restored = recovery.restore_state(self.repo, self.store, self.sched, self.executor, head=self.train.head)
        self._recovered = restored.recovered
        for key in restored.adopted:
            self._live.add(key)
            self.watch.began(key, here=self.executor.here(key))
            self._launched[key] = time.monotonic()
        for task_id, summary in restored.summaries.items():
            self.data[task_id].summary = summary
        for task_id, files in restored.files.items():
            self.data[task_id].files = files
        for task_id, feedback in restored.feedback.items():
            self.data[task_id].feedback = feedback

    def _record(self, task_id: str, **fields: Any) -> None:
        """The task's row as the scheduler now has it, with FIELDS."""
        self.store.set_task(task_id, status=str(self.sched.status(task_id)), **fields)

    def _take_phases(self) -> None:
        """What running attempts reported since the last look (a gate started, a worktree handed out)."""
        for task_id, fields in self.executor.phases():
            if fields.pop("gating", False):
                self.sched.gating(task_id)
                fields["status"] = str(self.sched.status(task_id))
            self.store.set_task(task_id, **fields)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> bool:
        """Drive every task to merged, failed or blocked, until the merge result passes the gate.

        True when every task merged and the merge result did not fail.
        """
        try:
            while True:
                self._drive()
                if not self._judge_merge_result():
                    break
            self._watch_shared_state(None)      # the last word on the checkout's files
        finally:
            self._reap()
        return self.merge_gate != "failed" and self.sched.all_merged()

    def _drive(self) -> None:
        recovered, self._recovered = self._recovered, []
        for a in recovered:
            self.store.event(EventKind.MERGE_RECOVERED, a.task_id, attempt=a.n)
        self._settle([recovery.recovered_outcome(self.store, self.plan, a, secrets=self.secret_values) for a in recovered])
        forecaster = (Forecaster(self.repo, running=self.executor.worktrees, head=lambda: self.train.head)
                      if self.config.scheduler.forecast else None)
        if forecaster is not None:
            forecaster.start()
        try:
            while True:
                self._take_phases()
                self.forecasts.take(forecaster.take() if forecaster is not None else None, live=self._live,
                                    launched=self._launched)
                self._block_dependents()
                self._stop_when_spent()
                while ((task_id := self.sched.pick(head=self.train.head, now=time.monotonic())) is not None
                       and self.executor.has_room()):
                    self._launch(task_id)
                self._announce_held()
                if not self.executor.running():
                    break
                done = self.executor.wait(0.5)
                self._take_phases()
                self._settle(done)
        except BaseException as first:
            self._stopping = True
            if forecaster is not None:
                forecaster.stop()
                forecaster = None
            outcomes, errors = self.executor.stop()
            for error in errors:   # the first error is the one raised; later ones go with it
                first.add_note(f"while stopping the other attempts: {type(error).__name__}: {error}")
            for outcome in outcomes:
                try:
                    self._settle([outcome])
                except Exception as later:
                    first.add_note(f"while stopping the other attempts: {type(later).__name__}: {later}")
            raise
        finally:
            if forecaster is not None:
                forecaster.stop()

    def _judge_merge_result(self) -> bool:
        """Run the configured checks on the integration head; eject the merge that broke it.

        True when tasks were re-queued and the scheduler has work again.
        """
        self.train.verify()
        head = self.train.head
        base = Sha(self.store.run().base)
        if head == base or not any(not c.affected for c in self.config.gate.checks):
            return False
        self.store.event(EventKind.MERGE_GATE_STARTED, commit=head)
        prober = Prober(self.repo, self.config, self.pool_root / f"{self.run_id}--merge-gate",
                        env={"WSWARM_RUN_ID": self.run_id, "WSWARM_PORT": str(self._free_port())},
                        log_dir=self.store.dir / layout.MERGE_GATE, cache=self.cache, cancel=self.cancel,
                        confinement=self.confinement)
        try:
            verdict = judge(self.repo, prober, base=base, head=head)
        finally:
            prober.close()
        self.merge_gate = verdict.report.verdict
        self.store.set_run(merge_gate=verdict.report.to_json())
        if verdict.guilty is None or verdict.rebuilt is None:
            reason = "" if verdict.report.passed else "the base fails these checks too; nothing to blame"
            self.store.event(EventKind(f"merge-gate-{self.merge_gate}"), commit=head, reason=reason or None)
            return False
        self.train.move(verdict.rebuilt.head, reason="wswarm: eject a merge")
        by_head = {a.head: a for a in self.store.attempts() if a.outcome == "merged"}
        guilty = by_head[verdict.guilty.theirs]
        self.store.event(EventKind.MERGE_GATE_FAILED, commit=head, guilty=guilty.task_id, new_head=verdict.rebuilt.head)
        for drop in verdict.rebuilt.dropped:
            a = by_head[drop.merge.theirs]
            culprit = drop.why == "guilty"
            # Built on it: started on top of it, or brought it into its branch while running.
            how = ("started on top of" if self.repo.is_ancestor(verdict.guilty.commit, Sha(a.start))
                   else "merged into its branch the work of")
            reason = {"guilty": "ejected: the merge result failed the gate after this merge",
                      "built-on": f"ejected: this attempt {how} '{guilty.task_id}', which was ejected",
                      "conflicts": f"ejected: does not merge cleanly without '{guilty.task_id}', which was ejected",
                      }[drop.why]
            self.store.finish_attempt(a.task_id, a.n, outcome="ejected", reason=reason, finished=a.finished)
            self.store.set_task(a.task_id, merge_commit=None)
            self.store.event(EventKind.EJECTED, a.task_id, attempt=a.n, reason=reason)
            feedback = (f"{reason}.\nThe merged result of all tasks failed these checks:\n\n{verdict.report.render()}"
                        if culprit else reason + ". Redo the work on top of the current integration head.")
            self._follow(a.task_id, a.n, self.sched.eject(a.task_id, a.n, culprit=culprit), reason, feedback)
        return True

    def _announce_held(self) -> None:
        """A `held` event when a ready task is held back, or held for another reason than before."""
        now = {h.task: (h.waiting_for, h.reason) for h in self.sched.held(head=self.train.head, now=time.monotonic())}
        for task_id, (waiting_for, why) in now.items():
            if self._held.get(task_id) != (waiting_for, why):
                self.store.event(EventKind.HELD, task_id, waiting_for=waiting_for, reason=why)
        self._held = now

    def _block_dependents(self) -> None:
        for blocked in self.sched.block_dependents():
            self._record(blocked.task, reason=blocked.reason)
            self.store.event(EventKind.BLOCKED, blocked.task, reason=blocked.reason)

    def _stop_when_spent(self) -> None:
        """Past --max-cost no attempt starts: the tasks still waiting are blocked, saying why.
        Attempts already running finish (their spend is already committed to)."""
        limit = self.options.max_cost
        if limit is None or not any(self.sched.status(t) == TaskStatus.PENDING for t in self.sched.order):
            return
        spent = self.store.run().cost_usd
        blocked = self.sched.stop_when_spent(spent=spent, limit=limit)
        if blocked and not self._spent_announced:
            self._spent_announced = True
            self.store.event(EventKind.SPENDING_LIMIT, spent_usd=round(spent, 6), max_cost_usd=limit)
        for b in blocked:
            self._record(b.task, reason=b.reason)
            self.store.event(EventKind.BLOCKED, b.task, reason=b.reason)

    def _launch(self, task_id: str) -> None:
        self.train.verify()
        start = self.train.head
        n = self.sched.start(task_id, head=start)
        branch = task_branch(self.run_id, task_id, n)
        self._record(task_id, attempts=n, branch=branch, reason=None)
        self.store.start_attempt(task_id, n, branch=branch, start=start)
        self._live.add((task_id, n))
        self._launched[(task_id, n)] = time.monotonic()
        self._ports[(task_id, n)] = self._free_port()
        self.store.event(EventKind.ATTEMPT_STARTED, task_id, attempt=n, branch=branch, start=start,
                         port=self._ports[(task_id, n)], agent=self.agent_for(self.plan[task_id]).name)
        task = self.plan[task_id]
        self.executor.submit(AttemptRequest(task=task, n=n, branch=branch, start=start,
                                            feedback=self.data[task_id].feedback, env=self._task_env(task, n),
                                            dependencies=self._dependency_summaries(task)))
        self.watch.began((task_id, n), here=self.executor.here((task_id, n)))

    # -- what an attempt is given -----------------------------------------------------------

    def _task_env(self, task: Task, n: int) -> dict[str, str]:
        return {"WSWARM_RUN_ID": self.run_id, "WSWARM_TASK_ID": task.id, "WSWARM_ATTEMPT": str(n),
                "WSWARM_PORT": str(self._ports[(task.id, n)])}

    def _free_port(self) -> int:
        return briefing.free_port(set(self._ports.values()))

    def _dependency_summaries(self, task: Task) -> list[dict[str, Any]]:
        return briefing.dependency_summaries(self.plan, task, {t: (d.summary, d.files) for t, d in self.data.items()})

    # -- deciding what follows (orchestrator thread) -------------------------------------------

    def _watch_shared_state(self, out: Outcome | None) -> None:
        """Before OUT is judged: a change to the state shared with the user while it ran may fail it
        (`SharedStateWatch.check`). None: the last word, once nothing runs."""
        if out is not None:
            self._live.discard((out.task.id, out.n))
        self.watch.check(out, self._live)

    def _settle(self, outcomes: list[Outcome]) -> None:
        """Settle OUTCOMES; those that passed their gate merge together (`Integration.merge_all`: under
        load outcomes arrive together, and a slow disk's synced write is paid once for all of them)."""
        gated = [out for out in outcomes if self._judge(out)]
        if not gated:
            return
        items = []
        for out in gated:
            assert out.head is not None and out.report is not None
            body = f"Task {out.task.id} ({out.task.type}), attempt {out.n}.\n{out.report.summary()}"
            items.append((out.head, merge_message(out.task.id, out.task.description, body)))
        results, error = self.train.merge_all(items)
        for out, merged in zip(gated, results):
            self._merged(out, merged)
        if error is not None:
            out = gated[len(results)]
            self.sched.finish(out.task.id, out.n, AttemptKind.ERROR)
            self.store.finish_attempt(out.task.id, out.n, outcome=AttemptKind.ERROR, head=out.head, reason=str(error),
                                      **out.stats())
            raise error

    def _judge(self, out: Outcome) -> bool:
        """Settle OUT, unless it passed its gate: then it is recorded as such (before the branch moves,
        so a crash in between is recoverable) and True, for the merge train."""
        self._watch_shared_state(out)
        task_id = out.task.id
        self._ports.pop((task_id, out.n), None)
        self._launched.pop((task_id, out.n), None)
        # Money spent is spent, even by an attempt that was interrupted.
        if out.cost_usd:
            self.store.add_cost(task_id, out.cost_usd)
        stats = out.stats()
        kind = AttemptKind(out.kind)
        self.sched.learn(task_id, (c.path for c in out.changes))
        if kind == AttemptKind.INTERRUPTED:
            restarted = self.forecasts.restarting.pop((task_id, out.n), None)
            self.sched.finish(task_id, out.n, kind)
            if restarted is not None and not self._stopping:
                other, paths = restarted
                where = ", ".join(paths)
                whose = f"what task '{other}' is changing" if other else "work merged meanwhile"
                out.reason = (f"restarted: its work conflicted with {whose} in {where}; it starts again from "
                              + ("the integration head once that task settles" if other else "the new integration head"))
                self.data[task_id].feedback = (
                    f"Your previous attempt was stopped early: its changes conflicted with {whose}, in {where}. "
                    "This attempt starts from the current integration head, which holds that work: build your "
                    "change on top of it.")
                self.store.event(EventKind.RESTARTED, task_id, attempt=out.n, other=other or "integration head",
                                 files=list(paths))
                if other:       # not from this head again while the other one still runs
                    self.sched.defer(task_id, until=other, head=self.train.head, now=time.monotonic())
            self.store.finish_attempt(task_id, out.n, outcome=kind, head=out.head, reason=out.reason, **stats)
            self._record(task_id, reason=out.reason if restarted else "interrupted; will start again")
            self._release(out, keep=False)
            return False
        report_json = out.report.to_json() if out.report else None
        if kind != AttemptKind.GATED:
            decision = self.sched.finish(task_id, out.n, kind, now=time.monotonic())
            self.store.finish_attempt(task_id, out.n, outcome=kind, head=out.head, reason=out.reason,
                                      gate=report_json, **stats)
            self.store.event(EventKind(kind), task_id, attempt=out.n, reason=out.reason,
                             agent=self.agent_for(out.task).name, gate=out.report.summary() if out.report else None)
            self._retry_or_fail(out, decision, out.feedback)
            return False
        self.sched.finish(task_id, out.n, kind)
        self.store.finish_attempt(task_id, out.n, outcome=kind, head=out.head, gate=report_json, **stats)
        self._record(task_id)
        return True

    def _merged(self, out: Outcome, merged: TrainResult) -> None:
        """Settle OUT, which passed its gate, by what the train did with it: merged, or conflicting."""
        task_id = out.task.id
        assert out.report is not None
        stats = out.stats()
        report_json = out.report.to_json()
        if merged.merge_commit is None:
            out.reason = reason = "merge conflict in " + ", ".join(merged.conflicts)
            decision = self.sched.finish(task_id, out.n, AttemptKind.CONFLICT, now=time.monotonic())
            self.store.finish_attempt(task_id, out.n, outcome=AttemptKind.CONFLICT, head=out.head, reason=reason,
                                      gate=report_json, **stats)
            self.store.event(EventKind.CONFLICT, task_id, attempt=out.n, files=merged.conflicts,
                             messages=merged.messages, agent=self.agent_for(out.task).name, gate=out.report.summary())
            self._retry_or_fail(out, decision, self._conflict_feedback(out, merged.conflicts, merged.messages))
            return
        st = self.data[task_id]
        st.summary, st.files = out.summary, [f[0] for f in json.loads(stats["files"])]
        self.sched.finish(task_id, out.n, AttemptKind.MERGED)
        self.store.finish_attempt(task_id, out.n, outcome=AttemptKind.MERGED, head=out.head, gate=report_json, **stats)
        self._record(task_id, merge_commit=merged.merge_commit, summary=out.summary, reason=None, worktree=None)
        self.store.event(EventKind.MERGED, task_id, attempt=out.n, commit=merged.merge_commit,
                         files=[redact_secrets(path) for path in st.files],
                         agent=self.agent_for(out.task).name, gate=out.report.summary())
        self._release(out, keep=False)
        self._spread_news(task_id, merged.merge_commit)

    def _spread_news(self, merged: str, head: str) -> None:
        """Tell every running attempt whose work may overlap MERGED's that it merged: its summary,
        files and the new head, which the agent can merge into its branch."""
        data = self.data[merged]
        item = {"task": merged, "summary": data.summary, "files": data.files, "head": head}
        for task_id, n in sorted(self._live):
            # Only an agent still at work hears it: one whose gate runs has finished.
            if (task_id != merged and self.sched.status(task_id) == TaskStatus.RUNNING
                    and self.sched.overlaps(task_id, merged, unknown=True)):
                self.executor.tell((task_id, n), item)
                self.store.event(EventKind.NEWS, task_id, attempt=n, about=merged, head=head)

    def _conflict_feedback(self, out: Outcome, files: list[str], messages: list[str]) -> str:
        assert out.head is not None
        merged = {a.head: a.task_id for a in self.store.attempts() if a.outcome == AttemptKind.MERGED and a.head}
        return briefing.conflict_feedback(self.repo, start=out.start, head=out.head, integration=self.train.head,
                                          files=files, messages=messages, merged=merged)

    def _retry_or_fail(self, out: Outcome, decision: Decision, feedback: str) -> None:
        self._follow(out.task.id, out.n, decision, out.reason, feedback)
        # A failed task's last worktree stays for inspection until `wswarm clean`.
        self._release(out, keep=decision == Decision.GIVE_UP)

    def _follow(self, task_id: str, n: int, decision: Decision, reason: str, feedback: str) -> None:
        """Carry out the scheduler's word on attempt N: back to pending with FEEDBACK for the next
        attempt, or failed once attempts are spent."""
        if decision == Decision.GIVE_UP:
            spent = self.sched.tasks[task_id].charged
            reason = f"{reason} (after {spent} attempt{'s' if spent != 1 else ''})"
            self._record(task_id, reason=reason)
            self.store.event(EventKind.FAILED, task_id, attempt=n, reason=reason)
            return
        self.data[task_id].feedback = feedback
        proc.write_new(self.store.attempt_dir(task_id, n) / layout.NEXT_FEEDBACK,
                       feedback.encode("utf-8", errors="replace"))
        self._record(task_id, reason=f"re-queued: {reason}", worktree=None)
        self.store.event(EventKind.REQUEUED, task_id, attempt=n, reason=reason)

    def _release(self, out: Outcome, *, keep: bool) -> None:
        self.executor.release(out, keep=keep)

    def _reap(self) -> None:
        """Wait for every worktree removal; one that failed is reported, not hidden."""
        for error in self.executor.cleanup_errors():
            self.store.event(EventKind.CLEANUP_FAILED, error=error)
