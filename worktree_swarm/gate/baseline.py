"""Judging a branch against its base: only what the branch makes newly fail counts against it.

A check that already fails on the base would otherwise send every task back. Failures are compared
by identity — a test id, a type error without its line number (lines shift when code is added
above), a security finding by rule and file — never by raw output.
"""

from __future__ import annotations

import re
from dataclasses import replace

from worktree_swarm.gate.report import CheckResult, tail

_TEST_IDS = [
    re.compile(r"^(?:FAILED|ERROR) (\S+)"),                          # pytest -rfE summary
    re.compile(r"^(?:FAIL|ERROR): (\S+ \([^)]*\))"),                 # unittest
    re.compile(r"^\s*(?:✕|×)\s+(.+?)(?:\s+\(\d+(?:\.\d+)?\s*m?s\))?$"),  # jest, vitest
    re.compile(r"^not ok \d+ - (.+)$"),                              # TAP
    re.compile(r"^--- FAIL: (\S+)"),                                 # go test
]
_DIAGNOSTICS = [
    re.compile(r"^(?P<path>[^\s:]+):\d+(?::\d+)?: error: (?P<msg>.+)$"),          # mypy
    re.compile(r"^(?P<path>[^\s(]+)\(\d+,\d+\): error (?P<msg>TS\d+: .+)$"),      # tsc
    re.compile(r"^\s*(?P<path>\S+):\d+:\d+ - error: (?P<msg>.+)$"),               # pyright
    re.compile(r"^(?P<path>[^\s:]+):\d+:\d+: (?P<msg>[A-Z]+\d+ .+)$"),             # ruff, flake8
]
_BANDIT_ISSUE = re.compile(r">> Issue: \[(?P<rule>[^\]]+)\]")
_BANDIT_WHERE = re.compile(r"Location: (?P<path>[^:\s]+):\d+")
_DIGITS = re.compile(r"\d+(?:\.\d+)?")
_MAX_SHOWN = 30


def failure_keys(output: str) -> set[str]:
    """The identities of the failures an output reports; falls back to its lines without numbers."""
    lines = output.splitlines()
    keys: set[str] = set()
    for line in lines:
        for rx in _TEST_IDS:
            if m := rx.search(line):
                keys.add(f"test {m.group(1).strip()}")
                break
        else:
            for rx in _DIAGNOSTICS:
                if m := rx.search(line):
                    keys.add(f"{m.group('path')}: {m.group('msg').strip()}")
                    break
    rule: str | None = None
    for line in lines:
        if m := _BANDIT_ISSUE.search(line):
            rule = m.group("rule")
        elif rule and (m := _BANDIT_WHERE.search(line)):
            keys.add(f"{m.group('path')}: {rule}")
            rule = None
    if keys:
        return keys
    # Unknown tools: compare lines, with numbers (timings, counts, line numbers) blanked out.
    return {_DIGITS.sub("#", line.strip()) for line in lines if line.strip()}


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
    return replace(branch, output=f"New failures (the base fails too, but not with these):\n{shown}\n\n"
                                  f"{tail(branch_output, 20)}",
                   note=f"{_count(len(new), 'new failure')} beyond the base's {len(known)}{credit}")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
