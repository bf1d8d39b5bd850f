"""Running the gate on one branch: built-in diff checks, then the configured checks."""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from dataclasses import dataclass, replace
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pygit2

from worktree_swarm.util import proc
from worktree_swarm.util.errors import CommandError
from worktree_swarm.config import CheckConfig, GateConfig
from worktree_swarm.gate.baseline import judge
from worktree_swarm.gate.cache import GateCache, cache_key
from worktree_swarm.gate.builtin import CHECK_NAMES, Finding, scan_diff
from worktree_swarm.gate.report import CheckResult, CheckStatus, GateReport, tail
from worktree_swarm.git.diff import PLAIN, FileChange, changed_files, diff_text
from worktree_swarm.git.repo import Repo
from worktree_swarm.sandbox import Confinement
from worktree_swarm.util.types import Sha

# sh's "command not found": the check could not run at all, which is never a pass.
_NOT_FOUND = 127


@dataclass(frozen=True)
class Memory:
    """What lets the gate skip and judge work: results remembered by tree, and the base's verdict."""

    cache: GateCache
    tree: str                                  # the tree being judged
    setup: str | None = None                   # part of every cache key: it shapes the environment
    base_tree: str | None = None               # the tree the branch started from
    baseline: Callable[[CheckConfig], tuple[CheckResult, str]] | None = None   # runs the check there

    def known_on_base(self, check: CheckConfig) -> tuple[CheckResult, str] | None:
        """The check's remembered result on the base tree, without running anything."""
        if self.base_tree is None:
            return None
        return self.cache.get(cache_key(check, self.base_tree, setup=self.setup))


def run_gate(*, repo: Repo, worktree: Path, base: Sha, head: Sha, config: GateConfig,
             declared_files: Sequence[str], env: Mapping[str, str], log_dir: Path,
             cancel: threading.Event | None = None, changes: Sequence[FileChange] | None = None,
             memory: Memory | None = None, confinement: Confinement = Confinement()) -> GateReport:
    """Judge HEAD (checked out in WORKTREE) against BASE; never raises for a failing check."""
    if changes is None:
        changes = changed_files(repo, base, head)
    return run_gate_on_diff(repo=repo, worktree=worktree, diff=diff_text(repo, base, head) if config.builtin else "",
                            blob_size=tree_blob_size(repo, head), history=(base, head),
                            changed=[c.path for c in changes], config=config, declared_files=declared_files,
                            env=env, log_dir=log_dir, cancel=cancel, memory=memory, confinement=confinement)



def _existing(worktree: Path, paths: Sequence[str]) -> list[str]:
    """The PATHS that exist in WORKTREE, each looked up from the worktree as git reaches it: a path
    whose full spelling passes PATH_MAX (git commits it fine) is there, and never an error."""
    top = os.open(worktree, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = []
        for path in paths:
            try:
                os.stat(path, dir_fd=top)
            except (OSError, ValueError):
                continue
            found.append(path)
        return found
    finally:
        os.close(top)


def run_gate_on_diff(*, repo: Repo, worktree: Path, diff: str, blob_size: Callable[[str], int | None],
                     history: tuple[Sha | None, Sha] | None, changed: Sequence[str], config: GateConfig,
                     declared_files: Sequence[str], env: Mapping[str, str], log_dir: Path,
                     cancel: threading.Event | None = None, memory: Memory | None = None,
                     confinement: Confinement = Confinement()) -> GateReport:
    """Judge DIFF, whose result is checked out in WORKTREE; never raises for a failing check.

    The built-in checks read DIFF (and, with HISTORY = (base or None for "from the root", head),
    each commit of that range for secrets added then removed); the configured checks run in
    WORKTREE with the CHANGED paths that exist there. With MEMORY, a check already run on this
    tree is not run again, and a failing check is judged only on what fails beyond the base.
    """
    results: list[CheckResult] = []
    if config.builtin:
        results += diff_results(repo, diff, blob_size=blob_size, history=history, declared_files=declared_files,
                                max_binary_bytes=config.max_binary_bytes)
    existing = _existing(worktree, changed)
    log_dir.mkdir(parents=True, exist_ok=True)
    for check in config.checks:
        log = log_dir / f"gate-{_safe(check.name)}.log"
        if memory is None:
            results.append(run_check(check, worktree=worktree, changed=existing, env=env, log=log, cancel=cancel,
                                     confinement=confinement))
            continue
        key = cache_key(check, memory.tree, files=affected_files(check, existing), setup=memory.setup)
        hit = memory.cache.get(key)
        if hit is not None:
            result, output = replace(hit[0], note=_joined(hit[0].note, "cached: this tree was checked before")), hit[1]
        else:
            result = run_check(check, worktree=worktree, changed=existing, env=env, log=log, cancel=cancel,
                               confinement=confinement)
            output = proc.read_text(log) if log.exists() else ""
            memory.cache.put(key, result, output)
        if not check.affected:
            if result.status == "fail" and memory.baseline is not None:
                result = judge(result, output, *memory.baseline(check))
            elif result.status == "pass" and (known := memory.known_on_base(check)) is not None:
                result = judge(result, output, *known)   # credit for fixing a known base failure
        results.append(result)
    results += [CheckResult(name, kind, "not-run", 0.0, note=f"not installed: {missing}")
                for name, kind, missing in config.not_installed]
    return GateReport(tuple(results))


def affected_files(check: CheckConfig, changed: Sequence[str]) -> list[str]:
    """The changed paths an `affected` check is given (none for a whole-tree check)."""
    if not check.affected:
        return []
    return [p for p in changed if check.glob is None or fnmatch.fnmatch(p, check.glob)]


def _joined(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def builtin_results(repo: Repo, base: Sha, head: Sha, declared_files: Sequence[str],
                    max_binary_bytes: int) -> list[CheckResult]:
    """The built-in checks on the diff from BASE to HEAD and on the commits between them."""
    return diff_results(repo, diff_text(repo, base, head), blob_size=tree_blob_size(repo, head),
                        history=(base, head), declared_files=declared_files, max_binary_bytes=max_binary_bytes)


def diff_results(repo: Repo, diff: str, *, blob_size: Callable[[str], int | None],
                 history: tuple[Sha | None, Sha] | None, declared_files: Sequence[str],
                 max_binary_bytes: int) -> list[CheckResult]:
    """One result per built-in check over DIFF (and over HISTORY's commits, for secrets)."""
    started = time.monotonic()
    findings = scan_diff(diff, declared_files=declared_files, blob_size=blob_size, max_binary_bytes=max_binary_bytes)
    if history is not None:
        findings += _secrets_in_history(repo, *history, {(f.path, f.message) for f in findings})
    seconds = time.monotonic() - started
    return [_builtin_result(name, [f for f in findings if f.check == name], seconds / len(CHECK_NAMES))
            for name in CHECK_NAMES]


def tree_blob_size(repo: Repo, commit: Sha) -> Callable[[str], int | None]:
    """The size of a file in COMMIT's tree, or None when it is not a file there."""
    tree = repo.pygit[commit].peel(pygit2.Tree)

    def blob_size(path: str) -> int | None:
        try:
            obj = tree[path]
        except KeyError:
            return None
        return obj.size if isinstance(obj, pygit2.Blob) else None

    return blob_size


def _builtin_result(name: str, findings: list[Finding], seconds: float) -> CheckResult:
    if not findings:
        return CheckResult(name, "builtin", "pass", seconds)
    status: CheckStatus = "fail" if any(f.severity == "fail" for f in findings) else "warn"
    lines = [f"{f.path}:{f.line}: {f.message}" if f.line else f"{f.path}: {f.message}" for f in findings]
    return CheckResult(name, "builtin", status, seconds, output=tail("\n".join(lines)),
                       note=f"{len(findings)} finding{'s' if len(findings) != 1 else ''}")


def _secrets_in_history(repo: Repo, base: Sha | None, head: Sha, seen: set[tuple[str, str]]) -> list[Finding]:
    """Secrets added by one of the branch's commits and removed by a later one (BASE None: from the root).

    The merge keeps the agent's commits, so a key that is gone from the net diff would still
    reach the integration branch's history.
    """
    revs = f"{base}..{head}" if base is not None else head
    if not _two_commits(repo, base, head):
        return []
    # A merge commit is read as what its resolution added beyond the automatic merge (--remerge-diff):
    # a key put in while merging, then dropped, stays in history too.
    raw = proc.git_bytes(*repo.objects_only(), "log", "-p", "--reverse", "--remerge-diff", *PLAIN, "-M",
                         "--src-prefix=a/", "--dst-prefix=b/", "--format=%x00%h", revs, cwd=repo.common_dir)
    found: list[Finding] = []
    for chunk in raw.decode("utf-8", errors="surrogateescape").split("\0")[1:]:
        commit, _, patch = chunk.partition("\n")
        for f in scan_diff(patch.lstrip("\n"), declared_files=(), blob_size=lambda _: None):
            if f.check == "secrets" and (f.path, f.message) not in seen:
                seen.add((f.path, f.message))
                found.append(replace(f, message=f"{f.message} (in commit {commit}, still in the branch's history)"))
    return found


def _two_commits(repo: Repo, base: Sha | None, head: Sha) -> bool:
    """Whether BASE..HEAD (from the root when BASE is None) holds at least two commits that are not
    merges: read in this process, stopping at the second (nearly always there is one)."""
    try:
        walker = repo.pygit.walk(repo.pygit[head].peel(pygit2.Commit).id)
        if base is not None:
            walker.hide(repo.pygit[base].peel(pygit2.Commit).id)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise CommandError(["git", "rev-list", f"{base}..{head}" if base else head], 128, str(exc)) from exc
    found = 0
    for commit in walker:
        if len(commit.parent_ids) < 2:
            found += 1
            if found == 2:
                return True
    return False


def run_setup(command: str, *, worktree: Path, env: Mapping[str, str], log: Path, timeout: float,
              cancel: threading.Event | None = None, confinement: Confinement = Confinement()) -> proc.GroupResult:
    """Run `[worktree] setup` in a fresh checkout, its output in LOG; every caller judges the result."""
    return confined(proc.shell_argv(command), worktree=worktree, env=env, log=log, timeout=timeout, cancel=cancel,
                    confinement=confinement)


def confined(argv: Sequence[str], *, worktree: Path, env: Mapping[str, str], log: Path, timeout: float,
             cancel: threading.Event | None, confinement: Confinement) -> proc.GroupResult:
    """Run ARGV in WORKTREE as CONFINEMENT says, its output in LOG (a new file; whatever was at that
    name is replaced, never followed). HOME and temp files, when confined, live beside LOG and go."""
    scratch = log.with_name(log.name + ".scratch")
    full, full_env = confinement.prepare(argv, cwd=worktree, env=env, scratch=scratch)
    proc.write_new(log, b"")
    try:
        return proc.run_in_group(full, cwd=worktree, env=full_env, output=log, timeout=timeout, cancel=cancel,
                                 pidfile=log.with_suffix(".pid"))
    finally:
        proc.remove_tree(scratch)


def run_check(check: CheckConfig, *, worktree: Path, changed: Sequence[str], env: Mapping[str, str],
              log: Path, cancel: threading.Event | None = None,
              confinement: Confinement = Confinement()) -> CheckResult:
    """Run one configured check through the shell in WORKTREE."""
    argv = proc.shell_argv(check.run)
    if check.affected:
        files = affected_files(check, changed)
        if not files:
            return CheckResult(check.name, check.kind, "skipped", 0.0,
                               note=f"no changed file matches {check.glob or 'any'}")
        # Changed paths come from an agent's work: they are arguments, never part of the script, and
        # each starts with ./ so that a file named `--config=…` is a path to the tool, not an option.
        argv = ["/bin/sh", "-c", check.run + ' "$@"', "wswarm-gate", *(f"./{path}" for path in files)]
    res = confined(argv, worktree=worktree, env=env, log=log, timeout=check.timeout, cancel=cancel,
                   confinement=confinement)
    output = proc.read_text(log)
    if res.timed_out:
        return CheckResult(check.name, check.kind, "fail", res.seconds, tail(output),
                           note=f"timed out after {check.timeout:g}s")
    if res.cancelled:
        return CheckResult(check.name, check.kind, "not-run", res.seconds, note="interrupted")
    if res.returncode == 0:
        return CheckResult(check.name, check.kind, "pass", res.seconds)
    note = "command not found (exit 127)" if res.returncode == _NOT_FOUND else f"exit {res.returncode}"
    return CheckResult(check.name, check.kind, "fail", res.seconds, tail(output), note=note)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
