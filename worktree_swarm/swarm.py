"""The scheduler: ready tasks -> agents in worktrees -> gate -> merge train -> re-queue or done.

One orchestrator thread owns every decision and every move of the integration branch; worker
threads only run an attempt (agent, commit, gate) and hand back its outcome.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from worktree_swarm import admission
from worktree_swarm.agents.base import Agent
from worktree_swarm.attempt import AttemptRunner, Outcome
from worktree_swarm.config import Config
from worktree_swarm.errors import CommandError
from worktree_swarm.agents.command import last_lines
from worktree_swarm.gate.builtin import redact_secrets, secret_env_values
from worktree_swarm.gate.cache import GateCache
from worktree_swarm.gate.probe import Prober
from worktree_swarm.gate.report import GateReport
from worktree_swarm.git.diff import FileChange, diff_text
from worktree_swarm.git.refs import run_prefix, task_branch
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.worktrees import WorktreePool
from worktree_swarm.guard import Guard
from worktree_swarm.merge import Integration, merge_message
from worktree_swarm.merge_gate import judge, train
from worktree_swarm.plan import Plan, Task
from worktree_swarm.sandbox import Confinement, available as sandbox_available
from worktree_swarm.state import ACTIVE_STATUSES, AttemptRow, RunStore
from worktree_swarm.types import BranchName, RunId, Sha

FEEDBACK_DIFF_LINES = 200
NEXT_FEEDBACK = "feedback-for-next-attempt.txt"


@dataclass(frozen=True)
class SwarmOptions:
    agents: int
    max_attempts: int
    agent_timeout: float
    max_cost: float | None = None   # USD; once spent, no new attempt starts


@dataclass
class _TaskState:
    status: str = "pending"
    started: int = 0            # attempts started (numbers the branches)
    charged: int = 0            # attempts that count against --max-attempts
    feedback: str | None = None
    summary: str = ""
    files: list[str] = field(default_factory=list)


class Swarm:
    def __init__(self, *, repo: Repo, config: Config, plan: Plan, store: RunStore, pool: WorktreePool,
                 agent_for: Callable[[Task], Agent], options: SwarmOptions, pool_root: Path) -> None:
        self.repo = repo
        self.config = config
        self.plan = plan
        self.store = store
        self.pool = pool
        self.agent_for = agent_for
        self.options = options
        run = store.run()
        self.run_id = RunId(run.id)
        self.integration = BranchName(run.integration_branch)
        # The one owner of the integration branch: it moves only from the head this run recorded.
        self.train = Integration(repo, store)
        for note in self.train.recover():
            store.event("integration-recovered", detail=note)
        self.cancel = threading.Event()
        self.pool_root = pool_root
        self.merge_gate: str | None = None     # passed | failed | unverified, once judged
        self._ports: dict[tuple[str, int], int] = {}
        self._reaper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wswarm-reaper")
        self._spent_announced = False
        self.guard = Guard(repo, own=f"refs/heads/{run_prefix(self.run_id)}")
        self._live: set[tuple[str, int]] = set()       # attempts running now
        self._window: set[tuple[str, int]] = set()     # attempts that ran since the last guard check
        self._suspects: set[tuple[str, int]] = set()   # ran while shared git state changed
        self._suspect_reason = ""
        self._scanned = time.monotonic()               # when the checkout's files were last scanned
        self._file_window: set[tuple[str, int]] = set()  # attempts that ran since that scan
        self._removals: list[Future[None]] = []
        # Code a confined agent wrote runs only in the sandbox: its setup and its checks, and every
        # probe and merge-result check of a run that holds such work.
        confined = any(agent_for(task).confined for task in plan)
        self.confinement = Confinement(sandboxed=confined and sandbox_available(), network=config.sandbox.network,
                                       pass_env=config.gate.pass_env)
        self.cache = GateCache(repo.state_dir / "gate-cache.db", enabled=config.gate.cache)
        self.throttle = admission.Throttle(admission.Admission(config.limits, state_dir=repo.state_dir),
                                           lambda kind, data: self.store.event(kind, **data))
        self.priority: dict[str, int] = {str(k): v for k, v in plan.priority().items()}
        self.state: dict[str, _TaskState] = {}
        self._recovered: list[AttemptRow] = []   # gated before a crash, merged first thing on resume
        self.attempts = AttemptRunner(repo=repo, config=config, store=store, pool=pool, pool_root=pool_root,
                                      agent_for=agent_for, cache=self.cache, cancel=self.cancel, run_id=self.run_id,
                                      agent_timeout=options.agent_timeout,
                                      secret_values=secret_env_values(os.environ), confinement=self.confinement)
        self._load_state()

    # -- state ---------------------------------------------------------------------------------

    def _load_state(self) -> None:
        """Rebuild the in-memory picture from the store; trust nothing that git does not confirm."""
        merges = self._train_merges(self.train.head)
        attempts = self.store.attempts()
        for row in self.store.tasks():
            st = _TaskState(status=row.status, summary=row.summary or "")
            mine = [a for a in attempts if a.task_id == row.id]
            st.started = max((a.n for a in mine), default=0)
            st.charged = sum(1 for a in mine if a.outcome not in ("interrupted", "running"))
            landed = next((a for a in reversed(mine) if a.head in merges), None)
            if row.status == "merged" and landed is None:
                st.status = "pending"
                self.store.set_task(row.id, status="pending", merge_commit=None,
                                    reason="its merge is no longer on the integration branch")
            elif row.status != "merged" and landed is not None:
                # Merged, then the process died before it could record that: git is the truth.
                st.status = "merged"
                self.store.finish_attempt(row.id, landed.n, outcome="merged", finished=landed.finished)
                self.store.set_task(row.id, status="merged", merge_commit=merges[str(landed.head)], reason=None)
                self.store.event("merged", row.id, attempt=landed.n, commit=merges[str(landed.head)],
                                 recovered=True)
            gated = mine[-1] if mine and mine[-1].outcome == "gated" and landed is None else None
            if gated is not None and st.status != "merged":
                # It passed its gate; only the merge was missing. The agent does not run again.
                st.status = "merging"
                st.charged -= 1   # counted again when it settles
                self._recovered.append(gated)
            elif st.status in ACTIVE_STATUSES:
                st.status = "pending"
                self.store.set_task(row.id, status="pending", reason="interrupted; will start again")
            if st.status == "merged" and mine:
                st.files = json.loads(mine[-1].files or "[]")
            if st.status == "pending" and mine:
                saved = self.store.attempt_dir(row.id, mine[-1].n) / NEXT_FEEDBACK
                st.feedback = saved.read_text(encoding="utf-8") if saved.is_file() else None
            self.state[row.id] = st

    def _train_merges(self, head: Sha) -> dict[str, str]:
        """{merged branch head: merge commit} along the integration branch's first-parent chain."""
        return {m.theirs: m.commit for m in train(self.repo, Sha(self.store.run().base), head)}

    def _set(self, task_id: str, status: str, **fields: Any) -> None:
        self.state[task_id].status = status
        self.store.set_task(task_id, status=status, **fields)

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
            self.throttle.admission.close()
        return self.merge_gate != "failed" and all(st.status == "merged" for st in self.state.values())

    def _drive(self) -> None:
        while self._recovered:
            a = self._recovered.pop(0)
            files = json.loads(a.files or "[]")
            self.store.event("merge-recovered", a.task_id, attempt=a.n)
            # The summary is what the agent's log ends with, as when the attempt first finished.
            log = self.store.attempt_dir(a.task_id, a.n) / "agent.log"
            summary = redact_secrets(last_lines(log, 5), known=self.attempts.secret_values)
            self._settle(Outcome(task=self.plan[a.task_id], n=a.n, kind="gated", branch=BranchName(a.branch),
                                 start=Sha(a.start), head=Sha(str(a.head)), summary=summary,
                                 report=GateReport.from_json(a.gate or '{"checks": []}'),
                                 changes=[FileChange(p, added, removed) for p, added, removed in files]))
        running: dict[Future[Outcome], str] = {}
        with ThreadPoolExecutor(max_workers=self.options.agents, thread_name_prefix="wswarm-agent") as pool:
            try:
                while True:
                    self._block_dependents()
                    self._stop_when_spent(exclude=set(running.values()))
                    for task_id in self._ready(exclude=set(running.values())):
                        if len(running) >= self.options.agents or not self.throttle.admit(running=len(running)):
                            break
                        running[self._launch(pool, task_id)] = task_id
                    if not running:
                        break
                    done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in done:
                        del running[future]
                        self._settle(future.result())
            except BaseException:
                self.cancel.set()
                for future in running:
                    try:
                        self._settle(future.result())
                    except Exception:  # noqa: BLE001 — the first error is the one being raised
                        pass
                raise

    def _judge_merge_result(self) -> bool:
        """Run the configured checks on the integration head; eject the merge that broke it.

        True when tasks were re-queued and the scheduler has work again.
        """
        self.train.verify()
        head = self.train.head
        base = Sha(self.store.run().base)
        if head == base or not any(not c.affected for c in self.config.gate.checks):
            return False
        self.store.event("merge-gate-started", commit=head)
        prober = Prober(self.repo, self.config, self.pool_root / f"{self.run_id}--merge-gate",
                        env={"WSWARM_RUN_ID": self.run_id, "WSWARM_PORT": str(self._free_port())},
                        log_dir=self.store.dir / "merge-gate", cache=self.cache, cancel=self.cancel,
                        confinement=self.confinement)
        try:
            verdict = judge(self.repo, prober, base=base, head=head)
        finally:
            prober.close()
        self.merge_gate = verdict.report.verdict
        self.store.set_run(merge_gate=verdict.report.to_json())
        if verdict.guilty is None or verdict.rebuilt is None:
            reason = "" if verdict.report.passed else "the base fails these checks too; nothing to blame"
            self.store.event(f"merge-gate-{self.merge_gate}", commit=head, reason=reason or None)
            return False
        self.train.move(verdict.rebuilt.head, reason="wswarm: eject a merge")
        by_head = {a.head: a for a in self.store.attempts() if a.outcome == "merged"}
        guilty = by_head[verdict.guilty.theirs]
        self.store.event("merge-gate-failed", commit=head, guilty=guilty.task_id, new_head=verdict.rebuilt.head)
        for drop in verdict.rebuilt.dropped:
            a = by_head[drop.merge.theirs]
            culprit = drop.why == "guilty"
            reason = {"guilty": "ejected: the merge result failed the gate after this merge",
                      "built-on": f"ejected: this attempt started on top of '{guilty.task_id}', which was ejected",
                      "conflicts": f"ejected: does not merge cleanly without '{guilty.task_id}', which was ejected",
                      }[drop.why]
            self.store.finish_attempt(a.task_id, a.n, outcome="ejected", reason=reason, finished=a.finished)
            self.store.set_task(a.task_id, merge_commit=None)
            self.store.event("ejected", a.task_id, attempt=a.n, reason=reason)
            feedback = (f"{reason}.\nThe merged result of all tasks failed these checks:\n\n{verdict.report.render()}"
                        if culprit else reason + ". Redo the work on top of the current integration head.")
            if culprit:
                self.state[a.task_id].charged += 1
            self._requeue(a.task_id, a.n, reason, feedback, charged=culprit)
        return True

    def _ready(self, *, exclude: set[str]) -> list[str]:
        ready = [t.id for t in self.plan if self.state[t.id].status == "pending" and t.id not in exclude
                 and all(self.state[d].status == "merged" for d in t.dependencies)]
        # Longest chain of dependents first; file order breaks ties.
        return sorted(ready, key=lambda tid: -self.priority[tid])

    def _block_dependents(self) -> None:
        for task in self.plan:
            if self.state[task.id].status != "pending":
                continue
            bad = [d for d in task.dependencies if self.state[d].status in ("failed", "blocked")]
            if bad:
                reason = f"depends on '{bad[0]}', which {self.state[bad[0]].status}"
                self._set(task.id, "blocked", reason=reason)
                self.store.event("blocked", task.id, reason=reason)

    def _stop_when_spent(self, *, exclude: set[str]) -> None:
        """Past --max-cost no attempt starts: the tasks still waiting are blocked, saying why.
        Attempts already running finish (their spend is already committed to)."""
        limit = self.options.max_cost
        waiting = [t for t, st in self.state.items() if st.status == "pending" and t not in exclude]
        if limit is None or not waiting:
            return
        spent = self.store.run().cost_usd
        if spent < limit:
            return
        reason = f"not started: the run reached its spending limit (${spent:.2f} spent, --max-cost {limit:g})"
        if not self._spent_announced:
            self._spent_announced = True
            self.store.event("spending-limit", spent_usd=round(spent, 6), max_cost_usd=limit)
        for task_id in waiting:
            self._set(task_id, "blocked", reason=reason)
            self.store.event("blocked", task_id, reason=reason)

    def _launch(self, pool: ThreadPoolExecutor, task_id: str) -> Future[Outcome]:
        st = self.state[task_id]
        st.started += 1
        n = st.started
        self.train.verify()
        start = self.train.head
        branch = task_branch(self.run_id, task_id, n)
        self._set(task_id, "running", attempts=n, branch=branch, reason=None)
        self.store.start_attempt(task_id, n, branch=branch, start=start)
        self._live.add((task_id, n))
        self._window.add((task_id, n))
        self._ports[(task_id, n)] = self._free_port()
        self.store.event("attempt-started", task_id, attempt=n, branch=branch, start=start,
                         port=self._ports[(task_id, n)], agent=self.agent_for(self.plan[task_id]).name)
        task = self.plan[task_id]
        return pool.submit(self.attempts.run, task, n, branch, start, st.feedback,
                           env=self._task_env(task, n), dependencies=self._dependency_summaries(task))

    # -- what an attempt is given -----------------------------------------------------------

    def _task_env(self, task: Task, n: int) -> dict[str, str]:
        return {"WSWARM_RUN_ID": self.run_id, "WSWARM_TASK_ID": task.id, "WSWARM_ATTEMPT": str(n),
                "WSWARM_PORT": str(self._ports[(task.id, n)])}

    def _free_port(self) -> int:
        """A port free right now and not handed to another running attempt, so the dev servers
        and test servers of parallel tasks never collide."""
        taken = set(self._ports.values())
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in taken:
                return port

    def _dependency_summaries(self, task: Task) -> list[dict[str, Any]]:
        """What every task this one depends on (directly or not) did, oldest first."""
        ancestors = set()
        stack = list(task.dependencies)
        while stack:
            dep = stack.pop()
            if dep not in ancestors:
                ancestors.add(dep)
                stack.extend(self.plan[dep].dependencies)
        return [{"id": tid, "description": self.plan[tid].description, "summary": self.state[tid].summary,
                 "files": self.state[tid].files}
                for tid in self.plan.topological_order() if tid in ancestors]


    # -- deciding what follows (orchestrator thread) -------------------------------------------

    def _watch_shared_state(self, out: Outcome | None) -> None:
        """Before an attempt is judged: did the user's checkout, branches or stash change while it
        ran? Lost stash entries are already restored; a git-level change (a switched checkout, a
        popped stash) fails every attempt that ran meanwhile, since any of them may carry what it
        took, and none is merged on trust."""
        me = (out.task.id, out.n) if out is not None else None
        if me is not None:
            self._live.discard(me)
        # The checkout's files (a warning only) are scanned at most once a second: `git status`
        # walks the whole tree (~90 ms at 50,000 files); refs and the stash cost microseconds.
        scan = me is None or time.monotonic() - self._scanned >= 1.0
        findings = self.guard.check(scan_files=scan)
        ran, self._window = sorted(self._window), set(self._live)
        self._file_window.update(ran)
        scanned = sorted(self._file_window)      # who ran since the files were last looked at
        if scan:
            self._scanned = time.monotonic()
            self._file_window = set(self._live)
        if not findings.changes:
            return
        who = sorted(set(ran) | set(scanned)) if any(c.kind == "checkout" for c in findings.changes) else ran
        self.store.event("shared-state-changed", detail=findings.describe(), restored=findings.restored or None,
                         agents_running=[f"{t}#{n}" for t, n in who],
                         blamed=len(ran) == 1 and findings.git_state)
        if findings.git_state:
            self._suspects.update(ran)
            self._suspect_reason = findings.describe()
        if out is not None and me in self._suspects and out.kind not in ("interrupted",):
            self._suspects.discard(me)
            alone = "" if ran == [me] else " (other agents ran at the same time)"
            out.kind = "agent-failed"
            out.reason = f"git state shared with the user changed while this agent ran{alone}: {self._suspect_reason}"
            out.feedback = (out.reason + "\nWork only inside your worktree: never switch the user's checkout, "
                            "create branches, use git stash (the stash is shared by every worktree), or change "
                            "git's configuration or hooks.")

    def _settle(self, out: Outcome) -> None:
        self._watch_shared_state(out)
        task_id = out.task.id
        self._ports.pop((task_id, out.n), None)
        # Money spent is spent, even by an attempt that was interrupted.
        if out.cost_usd:
            self.store.add_cost(task_id, out.cost_usd)
        stats = out.stats()
        if out.kind == "interrupted":
            self.store.finish_attempt(task_id, out.n, outcome="interrupted", head=out.head, reason=out.reason,
                                      **stats)
            self._set(task_id, "pending", reason="interrupted; will start again")
            self._release(out, keep=False)
            return
        self.state[task_id].charged += 1
        report_json = out.report.to_json() if out.report else None
        if out.kind != "gated":
            self.store.finish_attempt(task_id, out.n, outcome=out.kind, head=out.head, reason=out.reason,
                                      gate=report_json, **stats)
            self.store.event(out.kind, task_id, attempt=out.n, reason=out.reason,
                             agent=self.agent_for(out.task).name, gate=out.report.summary() if out.report else None)
            self._retry_or_fail(out, out.feedback)
            return
        # The head is on record before the ref moves, so a crash in between is recoverable.
        self.store.finish_attempt(task_id, out.n, outcome="gated", head=out.head, gate=report_json, **stats)
        self._set(task_id, "merging")
        assert out.head is not None and out.report is not None
        body = f"Task {task_id} ({out.task.type}), attempt {out.n}.\n{out.report.summary()}"
        try:
            merged = self.train.merge(out.head, merge_message(task_id, out.task.description, body))
        except CommandError as exc:
            self.store.finish_attempt(task_id, out.n, outcome="error", head=out.head, reason=str(exc), **stats)
            raise
        if merged.merge_commit is None:
            out.reason = reason = "merge conflict in " + ", ".join(merged.conflicts)
            self.store.finish_attempt(task_id, out.n, outcome="conflict", head=out.head, reason=reason,
                                      gate=report_json, **stats)
            self.store.event("conflict", task_id, attempt=out.n, files=merged.conflicts,
                             messages=merged.messages, agent=self.agent_for(out.task).name, gate=out.report.summary())
            self._retry_or_fail(out, self._conflict_feedback(out, merged.conflicts, merged.messages))
            return
        st = self.state[task_id]
        st.summary, st.files = out.summary, [f[0] for f in json.loads(stats["files"])]
        self.store.finish_attempt(task_id, out.n, outcome="merged", head=out.head, gate=report_json, **stats)
        self._set(task_id, "merged", merge_commit=merged.merge_commit, summary=out.summary, reason=None,
                  worktree=None)
        self.store.event("merged", task_id, attempt=out.n, commit=merged.merge_commit,
                         files=[redact_secrets(path) for path in st.files],
                         agent=self.agent_for(out.task).name, gate=out.report.summary())
        self._release(out, keep=False)

    def _conflict_feedback(self, out: Outcome, files: list[str], messages: list[str]) -> str:
        assert out.head is not None
        diff = diff_text(self.repo, out.start, out.head).splitlines()
        shown = "\n".join(diff[:FEEDBACK_DIFF_LINES])
        if len(diff) > FEEDBACK_DIFF_LINES:
            shown += f"\n[… {len(diff) - FEEDBACK_DIFF_LINES} more lines]"
        return ("Your previous attempt conflicted with work merged meanwhile by other tasks.\n"
                f"Conflicting files: {', '.join(files)}\n" + "".join(f"  {m}\n" for m in messages) +
                "This attempt starts from the current integration head, which contains their work. "
                "Redo your change on top of it.\n\nYour previous diff:\n" + shown)

    def _retry_or_fail(self, out: Outcome, feedback: str) -> None:
        self._requeue(out.task.id, out.n, out.reason, feedback, charged=True)
        # A failed task's last worktree stays for inspection until `wswarm clean`.
        self._release(out, keep=self.state[out.task.id].status == "failed")

    def _requeue(self, task_id: str, n: int, reason: str, feedback: str, *, charged: bool) -> None:
        """Back to pending with FEEDBACK for the next attempt, or failed once attempts are spent."""
        st = self.state[task_id]
        if charged and st.charged >= self.options.max_attempts:
            reason = f"{reason} (after {st.charged} attempt{'s' if st.charged != 1 else ''})"
            self._set(task_id, "failed", reason=reason)
            self.store.event("failed", task_id, attempt=n, reason=reason)
            return
        st.feedback = feedback
        (self.store.attempt_dir(task_id, n) / NEXT_FEEDBACK).write_text(feedback, encoding="utf-8", errors="replace")
        self._set(task_id, "pending", reason=f"re-queued: {reason}", worktree=None)
        self.store.event("requeued", task_id, attempt=n, reason=reason)

    def _release(self, out: Outcome, *, keep: bool) -> None:
        if out.worktree is None:
            return
        # Removing a worktree costs as much as making one (43 ms at 5,000 files), scrubbing a slot
        # tens of ms; done here it kept the next launch waiting (bench/README.md). A kept one (a
        # failed task's) goes to the pool too: a slot pool replaces it.
        self._removals.append(self._reaper.submit(self.pool.release, out.worktree, keep=keep))

    def _reap(self) -> None:
        """Wait for every worktree removal; one that failed is reported, not hidden."""
        self._reaper.shutdown(wait=True)
        for done in self._removals:
            if done.exception() is not None:
                self.store.event("cleanup-failed", error=str(done.exception()).splitlines()[0])
        self._removals.clear()
        self._reaper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wswarm-reaper")
