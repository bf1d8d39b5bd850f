"""Running configured checks on any commit, in one detached worktree, remembering results by tree."""

from __future__ import annotations

import threading
from pathlib import Path

from worktree_swarm.util import proc
from worktree_swarm.config import CheckConfig, Config
from worktree_swarm.gate.cache import GateCache, cache_key
from worktree_swarm.gate.report import CheckResult, GateReport
from worktree_swarm.gate.runner import run_check, run_setup
from worktree_swarm.git.repo import Repo
from worktree_swarm.git.worktrees import add_worktree, remove_worktree
from worktree_swarm.sandbox import Confinement
from worktree_swarm.util.types import Sha


class Prober:
    """Checks commits that no task has checked out: a base, or a merge on the integration branch.

    The worktree is made on first need and switched between commits (only differing files are
    touched); every result goes through the cache, so a tree is checked once per check.
    """

    def __init__(self, repo: Repo, config: Config, path: Path, *, env: dict[str, str], log_dir: Path,
                 cache: GateCache, cancel: threading.Event, confinement: Confinement = Confinement()) -> None:
        self.repo = repo
        self.config = config
        self.path = path
        self.env = env
        self.log_dir = log_dir
        self.cache = cache
        self.cancel = cancel
        self.confinement = confinement
        self._at: Sha | None = None
        self._setup_failed = False

    def result(self, check: CheckConfig, commit: Sha) -> tuple[CheckResult, str]:
        """CHECK's result on COMMIT and its full output (`affected` checks are given no files)."""
        tree = self.repo.tree_of(commit)
        key = cache_key(check, tree, setup=self.config.worktree.setup)
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        self._checkout(commit)
        if self._setup_failed:
            # Checks in a half-set-up checkout say nothing about the tree: not run, not remembered.
            return CheckResult(check.name, check.kind, "not-run", 0.0, note="the worktree setup step failed"), ""
        log = self.log_dir / f"probe-{commit[:12]}-{check.name}.log"
        result = run_check(check, worktree=self.path, changed=[], env=self.env, log=log, cancel=self.cancel,
                           confinement=self.confinement)
        output = proc.read_text(log)
        self.cache.put(key, result, output)
        return result, output

    def report(self, commit: Sha) -> GateReport:
        """Every whole-tree check (not the `affected` ones) on COMMIT."""
        return GateReport(tuple(self.result(c, commit)[0] for c in self.config.gate.checks if not c.affected))

    def _checkout(self, commit: Sha) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self._at is None:
            add_worktree(self.repo, self.path, commit)
            if self.config.worktree.setup:
                res = run_setup(self.config.worktree.setup, worktree=self.path, env=self.env,
                                log=self.log_dir / "probe-setup.log", timeout=self.config.agents.timeout,
                                cancel=self.cancel, confinement=self.confinement)
                self._setup_failed = res.returncode != 0
        elif self._at != commit:
            self.repo.git("checkout", "--quiet", "--force", "--detach", commit, cwd=self.path)
            self.repo.git("clean", "-fdq", cwd=self.path)
        self._at = commit

    def close(self) -> None:
        if self._at is not None:
            remove_worktree(self.repo, self.path)
            self._at = None
