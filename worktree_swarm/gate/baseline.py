"""Judging a branch against its base: only what the branch makes newly fail counts against it.

A check that already fails on the base would otherwise send every task back. Failures are compared
by identity — a test id, a type error without its line number (lines shift when code is added
above), a security finding by rule and file — never by raw output. The base and the branch are
checked in different folders (a base worktree, a task's slot, each with its own scratch and
temporary folders), so the parts of paths that say where a check ran are set aside first.
"""

from __future__ import annotations

import re
from dataclasses import replace

from worktree_swarm.gate.report import NEW_FAILURES, CheckResult, normalise_paths, parse_output, tail

_DIGITS = re.compile(r"\d+(?:\.\d+)?")
_MAX_SHOWN = 30


def failures(output: str) -> dict[str, str]:
    """The failures an output reports, by identity, each with the line that reported it; a tool
    that names none is compared by its lines with numbers (timings, counts, lines) blanked out."""
    lines = normalise_paths(output).splitlines()
    known = {f.key: f.source for f in parse_output("\n".join(lines))}
    if known:
        return known
    shown: dict[str, str] = {}
    for line in lines:
        if line.strip():
            shown.setdefault(_DIGITS.sub("#", line.strip()), line.strip())
    return shown


def failure_keys(output: str) -> set[str]:
    """The identities of the failures an output reports."""
    return set(failures(output))


def judge(branch: CheckResult, branch_output: str, base: CheckResult | None, base_output: str) -> CheckResult:
    """BRANCH's result as it should count, given the same check's result on the base."""
    if base is None or base.status != "fail" or branch.status not in ("pass", "fail"):
        return branch
    known = failure_keys(base_output)
    if branch.status == "pass":
        return replace(branch, note=f"fixes the base's {_count(len(known), 'failure')}")
    now = failures(branch_output)
    new = [line for key, line in now.items() if key not in known]
    fixed = known - set(now)
    credit = f"; fixes {len(fixed)} of the base's" if fixed else ""
    if not new:
        return replace(branch, status="pass", output="",
                       note=f"fails as the base does: {_count(len(now), 'known failure')}, none new{credit}")
    shown = "\n".join(new[:_MAX_SHOWN]) + (f"\n[… {len(new) - _MAX_SHOWN} more]" if len(new) > _MAX_SHOWN else "")
    return replace(branch, output=f"{NEW_FAILURES}\n{shown}\n\n{tail(branch_output, 20)}",
                   note=f"{_count(len(new), 'new failure')} beyond the base's {len(known)}{credit}")


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"
