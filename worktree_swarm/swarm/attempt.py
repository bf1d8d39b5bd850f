"""One attempt at one task, run on a worker thread: worktree, agent, leftovers committed, gate.

It decides nothing about what follows and writes no task row: it emits events, reports what a task
row should say, and the orchestrator settles each Outcome.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from worktree_swarm.util import proc
from worktree_swarm.agents.base import Agent, AgentRequest, News
from worktree_swarm.agents.prompt import build_prompt, role_prompt, system_prompt, task_prompt
from worktree_swarm.config import CheckConfig, Config
from worktree_swarm.util.errors import CommandError, DiskFullError, WswarmError, no_room
from worktree_swarm.util.redact import redact_secrets, scrub_logs
from worktree_swarm.gate.baseline import BaseFailing
from worktree_swarm.gate.cache import GateCache
from worktree_swarm.gate.probe import Prober
from worktree_swarm.gate.report import CheckResult, GateReport, tail
from worktree_swarm.gate.runner import Memory, run_gate, run_setup
from worktree_swarm.git.diff import FileChange, changed_files
from worktree_swarm.git.merge_tree import clean_message
from worktree_swarm.git import residue
from worktree_swarm.git.refs import encode
from worktree_swarm.git.slot_files import admin_dir, restore_index, save_index, undo_steering
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.worktrees import WorktreePool
from worktree_swarm.plan import Task
from worktree_swarm.sandbox import Confinement
from worktree_swarm.store import layout
from worktree_swarm.util.types import BranchName, RunId, Sha
from worktree_swarm.store.events import EventKind

# Generated paths named one by one to `git ls-files`, at most; past that, one listing of all.
MAX_PATHSPECS = 200


@dataclass
class Outcome:
    """What one attempt came to, before the orchestrator decides what follows."""

    task: Task
    n: int
    kind: str                 # gated | gate-failed | agent-failed | timeout | no-op | interrupted | error
    branch: BranchName
    start: Sha
    worktree: Path | None = None     # None until the pool handed one out
    head: Sha | None = None
    reason: str = ""
    feedback: str = ""
    summary: str = ""
    report: GateReport | None = None
    cost_usd: float = 0.0
    usage: dict[str, Any] = field(default_factory=dict)   # AgentResult.usage(): tokens, turns, session
    changes: list[FileChange] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        """The attempt's changed files and line counts, as stored in the attempts table."""
        return {"files": json.dumps([[c.path, c.added, c.removed] for c in self.changes]),
                "added": sum(c.added or 0 for c in self.changes),
                "removed": sum(c.removed or 0 for c in self.changes),
                "cost_usd": self.cost_usd, "usage": json.dumps(self.usage) if self.usage else None}



class AttemptLog(Protocol):
    """Where an attempt keeps its files and reports its events: the run's store on the integrator's
    machine (`RunStore`), a folder and an event stream on a worker's."""

    def attempt_dir(self, task_id: str, n: int) -> Path:
        """The attempt's folder (made if missing): prompts, logs, gate.json."""

    def event(self, kind: EventKind, task: str | None = None, **data: Any) -> object:
        """Record one event of the run."""


class AttemptRunner:
    """Everything an attempt needs, shared by the worker threads; it holds no scheduling state."""

    def __init__(self, *, repo: Repo, config: Config, store: AttemptLog, pool: WorktreePool, pool_root: Path,
                 agent_for: Callable[[Task], Agent], cache: GateCache, cancel: threading.Event, run_id: RunId,
                 agent_timeout: float, secret_values: list[str], confinement: Confinement = Confinement(),
                 report: Callable[[str, dict[str, Any]], None] = lambda task_id, fields: None,
                 integration_head: Callable[[], Sha | None] = lambda: None,
                 scanner: residue.Scanner | None = None, converting: bool | None = None) -> None:
        self.repo = repo
        self.config = config
        self.store = store
        self.pool = pool
        self.pool_root = pool_root
        self.agent_for = agent_for
        self.cache = cache
        self.cancel = cancel
        self.run_id = run_id
        self.agent_timeout = agent_timeout
        self.secret_values = secret_values
        self.confinement = confinement
        # What a task row should now say; the orchestrator writes it (it alone writes task rows).
        self.report = report
        self.integration_head = integration_head
        self.news: dict[tuple[str, int], News] = {}    # the news box of each attempt, set by its executor
        self.base_failing = BaseFailing(lambda kind, **data: store.event(kind, **data))
        # Slots are walked attempt after attempt: the scanner lists only what changed (a worker, which
        # makes a runner per attempt, passes its own, as it passes what `converting_config` said).
        self.scanner = scanner or residue.Scanner()
        self._converting = converting

    def run(self, task: Task, n: int, branch: BranchName, start: Sha, feedback: str | None, *,
            env: dict[str, str], dependencies: list[dict[str, Any]],
            cancel: threading.Event | None = None) -> Outcome:
        """One attempt: a worktree at START, the agent, its leftovers committed, the gate. CANCEL (default:
        the runner's, shared by every attempt) stops this attempt alone."""
        cancel = cancel or self.cancel
        adir = self.store.attempt_dir(task.id, n)
        name = f"{self.run_id}--{encode(task.id)}--{n}"
        out = Outcome(task=task, n=n, kind="error", branch=branch, start=start)
        try:
            out.worktree = self.pool.acquire(name=name, branch=branch, start=start)
            self.report(task.id, {"worktree": str(out.worktree)})
            return self._attempt_in(out, out.worktree, adir, feedback, env, dependencies, cancel)
        except (OSError, sqlite3.OperationalError) as exc:
            if no_room(exc):
                # A full disk is the machine's problem, not the task's: it stops the run (resumable)
                # instead of costing the task an attempt.
                raise DiskFullError(f"no space left to write: {exc}") from exc
            raise       # not the task's doing either: the run stops, resumable, its traceback kept
        except CommandError as exc:
            # git or a process refused what the attempt left (an unreadable file, a broken branch):
            # the attempt failed, and its agent hears why. Anything else is a bug, never a retry.
            out.kind, out.reason = "error", str(exc).splitlines()[0]
            out.feedback = str(exc)
            # The whole message (git's own words) stays with the attempt, not just its first line.
            proc.write_new(adir / "error.log", (str(exc) + "\n").encode("utf-8", errors="replace"))
            return out
        finally:
            # A key an agent or a check printed stays out of every log wswarm keeps.
            scrub_logs(adir, known=self.secret_values)

    def _attempt_in(self, out: Outcome, worktree: Path, adir: Path, feedback: str | None,
                    env: dict[str, str], dependencies: list[dict[str, Any]], cancel: threading.Event) -> Outcome:
        task = out.task
        agent = self.agent_for(task)
        request = self._request(out, worktree, adir, feedback, env, dependencies, agent=agent.name)
        if self.config.worktree.setup:
            # A slot whose setup inputs are unchanged since it last ran the step keeps its environment.
            if not self.pool.setup_needed(worktree):
                self.store.event(EventKind.SETUP_SKIPPED, task.id, attempt=out.n, reason="setup inputs unchanged")
            elif not self._setup(out, worktree, adir, env, cancel):
                return out
            else:
                self.pool.setup_done(worktree)
        self.store.event(EventKind.AGENT_STARTED, task.id, attempt=out.n, agent=agent.name, log=str(request.log_path))
        git_link = _read_link(worktree)
        admin = admin_dir(self.repo, worktree)
        # The index as wswarm left it: an agent's index decides what git's add takes as unchanged (a
        # flag, or a forged entry whose stat matches a file and whose blob is another), not the files.
        index = save_index(admin)
        # A second early: ctimes come from a clock that ticks coarser than this one.
        started_ns = time.time_ns() - 1_000_000_000
        result = agent.run(request, cancel=cancel)
        # Summaries travel into pr.md, the state and dependents' prompts: no secret goes with them.
        out.summary = redact_secrets(result.summary, known=self.secret_values)
        out.cost_usd = result.cost_usd
        out.usage = result.usage()
        self.store.event(EventKind.AGENT_FINISHED, task.id, attempt=out.n, agent=agent.name, ok=result.ok,
                         exit_code=result.exit_code, error=result.error, **out.usage)
        if result.cancelled:
            out.kind, out.reason = "interrupted", "interrupted"
            return out
        # Every git command below follows the worktree's .git file: one the agent repointed (at the
        # user's repository, say) would commit and gate there. Put it back and fail the attempt.
        if worktree.is_dir() and _read_link(worktree) != git_link:
            link = worktree / ".git"
            if link.is_dir() and not link.is_symlink():
                proc.remove_tree(link)
            else:
                link.unlink(missing_ok=True)
            link.write_bytes(git_link)
            out.kind, out.reason = "agent-failed", "the agent rewrote its worktree's .git file"
            out.feedback = out.reason + ": leave .git alone; it links the worktree to the repository."
            return out
        steered = undo_steering(admin)
        if steered:
            out.kind = "agent-failed"
            out.reason = f"the agent changed its worktree's git files ({', '.join(steered)})"
            out.feedback = out.reason + ": they decide which configuration and repository git uses; leave them alone."
            return out
        # A repository made inside the worktree has a config and attributes of its own, which the
        # next git command in the worktree would follow (a filter driver runs as the user).
        found = self.scanner.scan(worktree, common_dir=self.repo.common_dir)
        nested = self._nested_repositories(worktree, found.nested)
        if nested:
            residue.remove(worktree, nested)
            out.kind = "agent-failed"
            out.reason = f"the agent made a git repository inside its worktree ({', '.join(nested[:3])})"
            out.feedback = out.reason + ": do not run `git init` or clone into the worktree; add files instead."
            return out
        wrong_branch = self._left_branch(worktree, out.branch)
        if wrong_branch:
            out.kind, out.reason = "agent-failed", wrong_branch
            out.feedback = wrong_branch + "\nStay on the branch your worktree was created on."
            return out
        if index is not None:
            restore_index(admin, index)
        generated, out.head = self._commit_leftovers(task, out.n, worktree, out.branch, found.generated,
                                                     start=out.start)
        if generated:
            self.store.event(EventKind.LEFTOVERS_EXCLUDED, task.id, attempt=out.n,
                             files=[redact_secrets(p) for p in _summary(generated)])
        # The gate judges the commit: what was left out of it does not stay for the checks to find.
        residue.remove(worktree, generated)
        if self._converting is None:
            self._converting = converting_config(self.repo)
        if found.attributes or self._converting:
            self._as_checked_out(worktree, admin, since_ns=started_ns)
        if not result.ok:
            out.kind = "timeout" if result.timed_out else "agent-failed"
            out.reason = result.error or "the agent failed"
            out.feedback = f"{out.reason}\n\nThe end of its output:\n{tail(result.summary, 20)}"
            return out
        if out.head is None or not self.repo.is_ancestor(out.start, out.head):
            out.kind, out.reason = "agent-failed", "the task branch no longer contains its starting commit"
            out.feedback = out.reason + ": do not reset or rewrite the branch's history."
            return out
        # An agent may bring merged work into its branch (`git merge` of the integration head it was
        # told of): its own change is what the branch adds to the newest integration commit it holds.
        base = self._own_base(out.start, out.head)
        # Empty commits change nothing either: compare trees, not commit ids.
        if self.repo.tree_of(out.head) == self.repo.tree_of(base):
            out.kind, out.reason = "no-op", "no-op: the agent changed nothing"
            out.feedback = "Your previous attempt changed no files. The task needs changes to the repository."
            return out
        out.changes = changed_files(self.repo, base, out.head)
        self.report(task.id, {"gating": True})
        self.store.event(EventKind.GATE_STARTED, task.id, attempt=out.n, agent=agent.name,
                         files=[redact_secrets(c.path) for c in out.changes])
        # The base is checked only when a check fails, in a worktree of its own, through the cache.
        base_probe = Prober(self.repo, self.config, self.pool_root / f"{self.run_id}--{encode(task.id)}--{out.n}--base",
                            env=env, log_dir=adir, cache=self.cache, cancel=cancel,
                            confinement=self.confinement)
        start = base

        def baseline(check: CheckConfig) -> tuple[CheckResult, str]:
            result, output = base_probe.result(check, start)
            self.base_failing.saw(check, result, output, start)
            return result, output

        memory = Memory(cache=self.cache, tree=self.repo.tree_of(out.head), setup=self.config.worktree.setup,
                        base_tree=self.repo.tree_of(start), baseline=baseline)
        try:
            report = run_gate(repo=self.repo, worktree=worktree, base=base, head=out.head,
                              config=self.config.gate, declared_files=task.files, changes=out.changes,
                              env=env, log_dir=adir, cancel=cancel, memory=memory,
                              confinement=self.confinement)
        finally:
            base_probe.close()
        proc.write_new(adir / "gate.json", report.to_json().encode("utf-8"))
        self.store.event(EventKind.GATE_FINISHED, task.id, attempt=out.n, agent=agent.name, verdict=report.verdict,
                         summary=report.summary())
        out.report = report
        if cancel.is_set() and not report.passed:
            out.kind, out.reason = "interrupted", "interrupted during the gate"
        elif report.passed:
            out.kind = "gated"
        else:
            out.kind, out.reason = "gate-failed", report.summary()
            out.feedback = report.render()
        return out

    def _own_base(self, start: Sha, head: Sha) -> Sha:
        """START, or the newest commit of the integration branch that HEAD holds when the agent merged
        the integration head into its branch. Only a commit on the branch's first-parent line above
        START (an integration head, whose content was judged) counts, and only when it is HEAD's one
        merge base with the branch: of several, git merges from a blend of them, so a diff from one
        would hide what the merge brings in (a task branch's own commit holding what its later commits
        dropped, say)."""
        # The head the run recorded, not the branch: an agent can move the ref while this gate runs.
        integration = self.integration_head()
        if integration is None:
            return start
        found = self.repo.pygit.merge_base(head, integration)
        newest = Sha(str(found)) if found is not None else start
        if newest == start or not self.repo.is_ancestor(start, newest):
            return start
        bases = self.repo.git("merge-base", "--all", head, integration).stdout.split()
        line = self.repo.git("rev-list", "--first-parent", integration, f"^{start}").stdout.split()
        return newest if bases == [newest] and newest in line else start

    def _request(self, out: Outcome, worktree: Path, adir: Path, feedback: str | None,
                 env: dict[str, str], deps: list[dict[str, Any]], *, agent: str) -> AgentRequest:
        task = out.task
        roles = {name: role.system for name, role in self.config.roles.items()}
        role = role_prompt(task.type, roles)
        # prompt.md is the whole text (a command agent's WSWARM_PROMPT); task-prompt.md is it without the
        # role, for model-backed agents, which get the role as their system prompt.
        # Written without following links: another task's command agent could plant one in this folder.
        proc.write_new(adir / "prompt.md", build_prompt(task, role=role, dependencies=deps, feedback=feedback)
                       .encode("utf-8", errors="replace"))
        proc.write_new(adir / "task-prompt.md", task_prompt(task, dependencies=deps, feedback=feedback)
                       .encode("utf-8", errors="replace"))
        doc = {"run": self.run_id, "task": task.to_dict(), "attempt": out.n, "base": out.start,
               "branch": out.branch, "dependencies": deps}
        proc.write_new(adir / "task.json", json.dumps(doc, indent=2, ensure_ascii=False).encode("utf-8", errors="replace"))
        feedback_path = None
        if feedback:
            feedback_path = adir / "feedback.txt"
            proc.write_new(feedback_path, feedback.encode("utf-8", errors="replace"))
        # News of work merged while it runs: a file from the start, so a command agent can always read it.
        news = self.news.get((task.id, out.n)) or News()
        if news.path is not None:
            try:
                os.close(proc.open_regular(news.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
            except OSError:
                # Planted ahead by an agent that can write the run's folders (a link, a FIFO, a folder):
                # removed, never followed, and a file of ours takes its place.
                proc.remove_tree(news.path)
                os.close(proc.open_regular(news.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            env = {**env, "WSWARM_NEWS": str(news.path)}
        return AgentRequest(news=news, run_id=self.run_id, task=task, attempt=out.n, worktree=worktree, base=out.start,
                            prompt_path=adir / "prompt.md", task_json_path=adir / "task.json",
                            feedback_path=feedback_path, log_path=adir / layout.AGENT_LOG,
                            task_prompt_path=adir / "task-prompt.md", hold_fds=self.pool.holds(worktree),
                            timeout=self._timeout(task), env=env, system_prompt=system_prompt(role),
                            model=role_config.model if (role_config := self.config.roles.get(task.type)) else None,
                            activity=lambda line: self._activity(task.id, out.n, agent, line))

    def _activity(self, task_id: str, n: int, agent: str, line: str) -> None:
        text = redact_secrets(line.strip(), known=self.secret_values)[:300]
        if text:
            self.store.event(EventKind.AGENT_ACTIVITY, task_id, attempt=n, agent=agent, text=text)

    def _timeout(self, task: Task) -> float:
        named = self.config.agents.named.get(task.agent or self.config.agents.default)
        if named is not None and named.timeout:
            return named.timeout
        return self.agent_timeout

    def _setup(self, out: Outcome, worktree: Path, adir: Path, env: dict[str, str], cancel: threading.Event) -> bool:
        setup = self.config.worktree.setup
        assert setup is not None
        res = run_setup(setup, worktree=worktree, env=env, log=adir / "setup.log", timeout=self.agent_timeout,
                        cancel=cancel, confinement=self.confinement)
        if res.returncode == 0:
            return True
        log = proc.read_text(adir / "setup.log")
        out.kind = "interrupted" if res.cancelled else "error"
        out.reason = "the worktree setup step failed" + ("" if res.returncode is None else f" (exit {res.returncode})")
        out.feedback = f"{out.reason}:\n{tail(log)}"
        return False

    def _nested_repositories(self, worktree: Path, found: list[str]) -> list[str]:
        """Of the repositories FOUND inside WORKTREE, those git would look into: not those in ignored
        folders (a package manager's checkout of a git dependency), which no git command of ours enters."""
        if not found:
            return []
        folders = "".join(os.path.dirname(path) + "\0" for path in found)
        ignored = self.repo.git("check-ignore", "-z", "--stdin", cwd=worktree, check=False,
                                input=folders).stdout.split("\0")
        return [path for path in found if os.path.dirname(path) not in ignored]

    def _left_branch(self, worktree: Path, branch: BranchName) -> str | None:
        if not worktree.is_dir():
            return "the agent deleted its worktree"
        head = _head_ref(self.repo, worktree)
        if head != f"refs/heads/{branch}":
            return f"the agent left its branch (HEAD is {head or 'detached'}, expected {branch})"
        return None

    def _commit_leftovers(self, task: Task, n: int, worktree: Path, branch: BranchName,
                          looks_generated: list[str], *, start: Sha) -> tuple[list[str], Sha | None]:
        """Commit on BRANCH what the agent left uncommitted, with the user's identity, except new
        generated files no one commits (bytecode, node_modules, editor swap files, coverage data, tool
        caches) even where no .gitignore says so. Returns the files left out (all that is still
        untracked), also written to the attempt's leftovers.log; tracked files of those kinds are
        committed like any other. Commits the agent made itself are kept: nothing left, no commit.
        LOOKS_GENERATED: the worktree's paths of those kinds, tracked or not (`residue.scan`). Also
        returns the branch's head: the commit made here, read from nowhere else."""
        # The index is wswarm's, of START: what the agent committed on top comes into it, entries
        # unchanged since START keeping the stat data of wswarm's checkout, the others none (hashed again).
        tip = self.repo.branch_sha(branch)
        if tip is not None and tip != start:
            self.repo.git("read-tree", "--reset", tip, cwd=worktree)
        generated = self._untracked(worktree, looks_generated)
        if not generated:
            self.repo.git("add", "-A", cwd=worktree)
        else:
            # Pathspec excludes, not an excludes file: `-c core.excludesFile` would replace the user's own.
            folders, files = _exclusions(generated)
            self.repo.git("add", "-A", "--", ".", *(f":(exclude,literal){p}" for p in folders + files), cwd=worktree)
            if folders:     # tracked files inside a generated folder are committed like any other
                self.repo.git("add", "-u", "--", *(f":(literal){p}" for p in folders), cwd=worktree)
            _log_left_out(self.store.attempt_dir(task.id, n), _summary(generated))
        # Plumbing, not `git commit`: the index is written as it stands (commit would stat every file
        # again, ~8 ms at 5,000 files), nothing to commit is a tree compared in memory, and no hook,
        # template or signing program of anyone's is in the way; the branch moves by compare-and-swap.
        tree = Sha(self.repo.git("write-tree", cwd=worktree).stdout.strip())
        if tip is None or self.repo.tree_of(tip) == tree:
            return generated, tip
        commit = self.repo.commit(tree, [tip], clean_message(f"{task.id}: {task.description}"))
        self.repo.update_ref(branch, commit, tip, reason=f"wswarm: commit what {task.id} left")
        return generated, commit

    def _as_checked_out(self, worktree: Path, admin: Path, *, since_ns: int) -> None:
        """The files the agent wrote become what a checkout of the commit holds. Attributes that convert
        content (ident, text and eol, filters, encodings) can make the bytes the agent left differ from
        that checkout's, and the gate must judge the bytes that merge (the commit is the index now)."""
        import pygit2

        written = residue.written_since(worktree, since_ns)
        if not written:
            return
        tracked = {entry.path for entry in pygit2.Index(str(admin / "index"))}
        paths = [path for path in written if path in tracked]
        if not paths:
            return
        # checkout-index leaves a file whose stat matches its index entry as it is, even forced.
        residue.remove(worktree, paths)
        self.repo.git("checkout-index", "-f", "-z", "--stdin", cwd=worktree, input="".join(p + "\0" for p in paths))

    def _untracked(self, worktree: Path, paths: list[str]) -> list[str]:
        """The untracked, not ignored files at or under PATHS: git is asked only when there are any
        (one listing, sorted here: git's glob pathspecs in `add` cost ~10 ms more than this)."""
        if not paths:
            return []
        # Past a few hundred, the whole listing is cheaper than that many pathspecs (and fits argv).
        spec = [f":(literal){p}" for p in paths] if len(paths) <= MAX_PATHSPECS else []
        listed = self.repo.git("ls-files", "-z", "--others", "--exclude-standard", "--", *spec, cwd=worktree)
        return [p for p in listed.stdout.split("\0") if p and residue.is_generated(p)]


def _head_ref(repo: Repo, worktree: Path) -> str:
    """The ref WORKTREE's HEAD names (`git symbolic-ref -q HEAD`), "" when it is detached. Read from
    the worktree's own git dir, saving a process per attempt; git is asked when that dir cannot be
    vouched for (its back link rewritten) or HEAD is not a plain file (a link)."""
    try:
        text = proc.read_text(admin_dir(repo, worktree) / "HEAD")
    except (WswarmError, OSError, ValueError):
        return repo.git("symbolic-ref", "-q", "HEAD", cwd=worktree, check=False).stdout.strip()
    return text[len("ref:"):].strip() if text.startswith("ref:") else ""


def _read_link(worktree: Path) -> bytes:
    """The worktree's .git file (`gitdir: …`), or b"" when it is missing or not a file."""
    try:
        return (worktree / ".git").read_bytes() if (worktree / ".git").is_file() else b""
    except OSError:
        return b""


def _exclusions(generated: list[str]) -> tuple[list[str], list[str]]:
    """What to leave out of `git add`: each generated folder once, and generated files outside them."""
    folders, files = set(), []
    for path in generated:
        top = residue.generated_folder(path)
        if top is None:
            files.append(path)
        else:
            folders.add("/".join(path.split("/")[:top + 1]))
    return sorted(folders), files


def _summary(generated: list[str]) -> list[str]:
    """GENERATED as a reader wants it: a folder of them as `folder/ (N files)`."""
    counts: dict[str, int] = {}
    for path in generated:
        top = residue.generated_folder(path)
        key = path if top is None else "/".join(path.split("/")[:top + 1]) + "/"
        counts[key] = counts.get(key, 0) + 1
    return [key if not key.endswith("/") else f"{key} ({n} file{'s' if n > 1 else ''})"
            for key, n in sorted(counts.items())]


def _log_left_out(adir: Path, left_out: list[str]) -> None:
    text = ("Not committed with the agent's leftovers: generated files no one commits (add them in a commit "
            "of your own, or have the agent commit them, if they belong in the repository):\n"
            + "".join(f"  {entry}\n" for entry in left_out))
    fd = proc.open_regular(adir / "leftovers.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "a", encoding="utf-8", errors="replace") as log:
        log.write(text)


def converting_config(repo: Repo) -> bool:
    """Whether the user's side of git may convert files on add and checkout beyond a worktree's own
    `.gitattributes`: an attributes file of the repository's or the user's, or line-end settings."""
    if (repo.common_dir / "info" / "attributes").exists():
        return True
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    if (home / "git" / "attributes").exists():
        return True
    said = repo.git("config", "--get-regexp", r"^core\.(autocrlf|eol|attributesfile)$", check=False)
    return bool(said.stdout.strip())
