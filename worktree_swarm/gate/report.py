"""A gate's verdict: each check, its status, its time, the tail of a failure's output."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

CheckStatus = Literal["pass", "fail", "warn", "skipped", "not-run"]
TAIL_LINES = 40


@dataclass(frozen=True)
class CheckResult:
    name: str
    kind: str
    status: CheckStatus
    seconds: float
    output: str = ""          # the tail of the output (failures and warnings only)
    note: str = ""            # one line: why skipped, which findings, …


@dataclass(frozen=True)
class GateReport:
    results: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(r.status != "fail" for r in self.results)

    @property
    def verdict(self) -> Literal["passed", "failed", "unverified"]:
        """`unverified` when nothing failed but a check could not run: no claim that it passes."""
        if not self.passed:
            return "failed"
        return "unverified" if any(r.status == "not-run" for r in self.results) else "passed"

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    def to_json(self) -> str:
        return json.dumps({"passed": self.passed, "checks": [asdict(r) for r in self.results]})

    @classmethod
    def from_json(cls, text: str) -> GateReport:
        data: dict[str, Any] = json.loads(text)
        return cls(tuple(CheckResult(**r) for r in data["checks"]))

    def summary(self) -> str:
        """One line: `gate passed: tests ✓ 1.2s, secrets ✓` or the failures first."""
        verdict = "passed" if self.passed else "FAILED"
        marks = {"pass": "✓", "fail": "✗", "warn": "!", "skipped": "–", "not-run": "?"}
        items = ", ".join(f"{r.name} {marks[r.status]}" + (f" {r.seconds:.1f}s" if r.seconds >= 0.05 else "")
                          for r in sorted(self.results, key=lambda r: r.status != "fail"))
        return f"gate {verdict}: {items}" if items else f"gate {verdict}: no checks"

    def render(self) -> str:
        """The readable report: a line per check, then the tail of each failure and warning."""
        lines = [self.summary()]
        for r in self.results:
            lines.append(f"  {r.status:8} {r.name:20} {r.kind:9} {r.seconds:6.1f}s  {r.note}".rstrip())
        for r in self.results:
            if r.status in ("fail", "warn") and r.output.strip():
                lines.append(f"\n--- {r.name} ({r.status}) ---\n{r.output.rstrip()}")
        return "\n".join(lines)


def tail(text: str, lines: int = TAIL_LINES) -> str:
    kept = text.rstrip().splitlines()
    if len(kept) <= lines:
        return "\n".join(kept)
    return f"[… {len(kept) - lines} lines cut …]\n" + "\n".join(kept[-lines:])
