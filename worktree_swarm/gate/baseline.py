"""Judging a branch against its base: only what the branch makes newly fail counts against it.

A check that already fails on the base would otherwise send every task back. Failures are compared
by identity — a test id, a type error without its line number (lines shift when code is added
above), a security finding by rule and file — never by raw output. The base and the branch are
checked in different folders (a base worktree, a task's slot, each with its own scratch and
temporary folders), so the parts of paths that say where a check ran are set aside first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from worktree_swarm.config import CheckConfig
from worktree_swarm.gate.detect import is_detected
from worktree_swarm.gate.report import NEW_FAILURES, CheckResult, line_key, normalise_paths, parse_output, tail
from worktree_swarm.store.events import EventKind

_MAX_SHOWN = 30


def failure_keys(output: str) -> set[str]:
    """The identities of the failures an output reports; a tool that names none is compared by its
    lines with numbers (timings, counts, line numbers) blanked out."""
    keys = {f.key for f in parse_output(normalise_paths(output))}
    if keys:
        return keys
    return {line_key(line) for line in output.splitlines() if line.strip()}


def judge(branch: CheckResult, branch_output: str, base: CheckResult | None, base_output: str) -> CheckResult:
    """BRANCH's result as it should count, given the same check's result on the base."""
    if base is None or base.status != "fail" or branch.status not in ("pass", "fail"):
        return branch
    known = failure_keys(base_output)
    if branch.status == "pass":
        return replace(branch, note=f"fixes the base's {_count(len(known), 'failure')}")
    now = failure_keys(branch_output)
    new = sorted(now - known)
    fixed = known - now
    credit = f"; fixes {len(fixed)} of the base's" if fixed else ""
    if not new:
        return replace(branch, status="pass", output="",
                       note=f"fails as the base does: {_count(len(now), 'known failure')}, none new{credit}")
    shown = "\n".join(new[:_MAX_SHOWN]) + (f"\n[… {len(new) - _MAX_SHOWN} more]" if len(new) > _MAX_SHOWN else "")
    return replace(branch, output=f"{NEW_FAILURES}\n{shown}\n\n{tail(branch_output, 20)}",
                   note=f"{_count(len(new), 'new failure')} beyond the base's {len(known)}{credit}")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


class BaseFailing:
    """Tells once per check (as a `base-failing` event) that it fails where tasks start, before any
    task's change: every task is then judged only on failures beyond those, and a detected check
    failing there usually runs the wrong way for the project. Known only once a branch fails the
    check and the base is probed; checking the base up front would cost a whole run of the checks
    before the first agent starts. Thread-safe: attempts gate side by side."""

    def __init__(self, emit: Callable[..., object]) -> None:
        self._emit = emit
        self._told: set[str] = set()
        self._lock = threading.Lock()

    def saw(self, check: CheckConfig, result: CheckResult, output: str, commit: str) -> None:
        """The base's RESULT for CHECK at COMMIT is known."""
        if result.status != "fail":
            return
        with self._lock:
            if check.name in self._told:
                return
            self._told.add(check.name)
        self._emit(EventKind.BASE_FAILING, check=check.name, commit=commit, failures=len(failure_keys(output)),
                   detected=is_detected(check))

