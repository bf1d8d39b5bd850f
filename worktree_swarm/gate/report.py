"""A gate's verdict: each check, its status, its time, the tail of a failure's output; and what a
failing check found, read from that output (the one place tool output is parsed)."""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import asdict, dataclass, field, replace
from functools import cache
from typing import Any, Literal

from worktree_swarm.util.redact import redact_secrets

CheckStatus = Literal["pass", "fail", "warn", "skipped", "not-run"]
TAIL_LINES = 40
MAX_FINDINGS = 20   # per check: a suite that fails 300 tests needs its first ones named, not all
# How the baseline judgement starts the output of a check that fails beyond its base's failures.
NEW_FAILURES = "New failures (the base fails too, but not with these):"


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


# --- findings -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckFinding:
    """One thing a failing or warning check found: where (when the tool says) and what.

    KEY is its identity for comparing a branch with its base: a test id, a diagnostic without its
    line number (lines shift when code is added above), a security rule in a file."""

    check: str
    path: str | None
    line: int | None
    message: str
    status: CheckStatus = "fail"   # the check's: a warning's findings do not block a merge
    key: str = field(default="", compare=False)
    source: str = field(default="", compare=False)   # the output line it was read from

    @property
    def where(self) -> str:
        """`path:line`, `path`, or empty."""
        if self.path is None:
            return ""
        return f"{self.path}:{self.line}" if self.line is not None else self.path

    def data(self) -> dict[str, Any]:
        return {"check": self.check, "path": self.path, "line": self.line, "message": self.message,
                "status": self.status}

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


# Test runners' lines naming one failing test.
_PYTEST = re.compile(r"^(?P<kind>FAILED|ERROR) (?P<id>[^\s(]\S*)(?: - (?P<msg>.*))?")   # pytest -rfE, not unittest's "FAILED (failures=2)"
_UNITTEST = re.compile(r"^(?P<kind>FAIL|ERROR): (?P<id>\S+ \([^)]*\))")
_OTHER_TESTS = [
    re.compile(r"^\s*(?:✕|×)\s+(?P<id>.+?)(?:\s+\(\d+(?:\.\d+)?\s*m?s\))?$"),  # jest, vitest
    re.compile(r"^not ok \d+ - (?P<id>.+)$"),                                   # TAP
    re.compile(r"^--- FAIL: (?P<id>\S+)"),                                      # go test
]
# Diagnostics with a file and a line.
_DIAGNOSTICS = [
    re.compile(r"^(?P<path>[^\s:]+):(?P<line>\d+)(?::\d+)?: error: (?P<msg>.+)$"),          # mypy
    re.compile(r"^(?P<path>[^\s(]+)\((?P<line>\d+),\d+\): error (?P<msg>TS\d+: .+)$"),      # tsc
    re.compile(r"^\s*(?P<path>\S+):(?P<line>\d+):\d+ - error: (?P<msg>.+)$"),               # pyright
    re.compile(r"^(?P<path>[^\s:]+):(?P<line>\d+):\d+: (?P<msg>[A-Z]+\d+ .+)$"),             # ruff, flake8
]
_BANDIT_ISSUE = re.compile(r">> Issue: \[(?P<rule>[^\]]+)\] ?(?P<msg>.*)")
_BANDIT_WHERE = re.compile(r"Location: (?P<path>[^:\s]+):(?P<line>\d+)")
_TRACEBACK_FILE = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+)')
_UNITTEST_RULE = re.compile(r"^(?:=|-){20,}$")
# The built-in checks' lines (gate/runner.py): `path:line: message` or `path: message`.
_BUILTIN = re.compile(r"^(?P<path>.+?)(?::(?P<line>\d+))?: (?P<msg>.+)$")
_CUT = re.compile(r"^\[… \d+ (?:lines cut|more)")
_DIGITS = re.compile(r"\d+(?:\.\d+)?")

_PATH_START = r"""[^\s'"`(),;=]*?"""
_COMPONENT = r"""[^/\s'"`(),;:]+"""
# Where wswarm checks code out: the task slots and the worktrees of a base, a merge result or a
# task without slots. The same failure in two of them differs only by this part of its paths.
_CHECKOUT = re.compile(rf"{_PATH_START}/wswarm/(?:slots/slot-|worktrees/){_COMPONENT}")
# A confined check's HOME and TMPDIR, made beside its log (gate/runner.py confined()).
_SCRATCH_HOME = re.compile(rf"{_PATH_START}\.scratch/home(?![^/\s'\"`(),;:])")
# The folder made in a temporary folder (mkdtemp's random name, pytest's numbered base temp)
# differs from run to run too; a file right in it keeps its name.
_MADE_IN_TEMP = rf"""(?:/pytest-of-[^/\s'"`]+/pytest-\d+|/{_COMPONENT}(?=/))?"""
_SCRATCH_TMP = re.compile(rf"{_PATH_START}\.scratch/tmp{_MADE_IN_TEMP}(?![^/\s'\"`(),;:])")
CHECKOUT = "<checkout>"


@cache
def _temp_dirs() -> re.Pattern[str]:
    roots = sorted({"/tmp", "/var/tmp", "/dev/shm", tempfile.gettempdir().rstrip("/")}, key=len, reverse=True)
    alternatives = "|".join(re.escape(r) for r in roots if r)
    return re.compile(rf"""(?<![\w/.~-])(?:/private)?(?:{alternatives}|/var/folders/[^/\s]+/[^/\s]+/T)"""
                      rf"""{_MADE_IN_TEMP}(?![^/\s'"`(),;:])""")


def normalise_paths(text: str) -> str:
    """TEXT with the parts of its paths that depend on where a check ran replaced by placeholders:
    a wswarm checkout by `<checkout>`, a scratch or temporary folder by `<home>` or `<tmp>`."""
    text = _SCRATCH_HOME.sub("<home>", text)
    text = _SCRATCH_TMP.sub("<tmp>", text)
    text = _CHECKOUT.sub(CHECKOUT, text)
    return _temp_dirs().sub("<tmp>", text)


def _local(path: str) -> str:
    """PATH relative to the checkout it is in, when it is in one of wswarm's."""
    found = _CHECKOUT.match(path)
    if found is None:
        return path
    return path[found.end():].lstrip("/") or "."


def parse_output(output: str, check: str = "") -> list[CheckFinding]:
    """The failures a tool's output names: failing tests (pytest, unittest, jest, vitest, TAP, go),
    diagnostics (mypy, tsc, pyright, ruff, flake8) and bandit's issues; each once, in order."""
    lines = output.splitlines()
    found: dict[str, CheckFinding] = {}

    def add(f: CheckFinding) -> None:
        found.setdefault(f.key, f)

    rule: tuple[str, str] | None = None
    for i, line in enumerate(lines):
        if m := _PYTEST.match(line):
            add(_pytest(check, m, line))
        elif m := _UNITTEST.match(line):
            add(_unittest(check, m, lines[i + 1:], line))
        elif m := _BANDIT_ISSUE.search(line):
            rule = (m.group("rule"), m.group("msg").strip())
        elif rule and (m := _BANDIT_WHERE.search(line)):
            path = m.group("path")
            add(CheckFinding(check, _local(path), int(m.group("line")), f"[{rule[0]}] {rule[1]}".strip(),
                             key=f"{path}: {rule[0]}", source=line))
            rule = None
        else:
            for rx in _OTHER_TESTS:
                if m := rx.search(line):
                    name = m.group("id").strip()
                    add(CheckFinding(check, None, None, f"{name} failed", key=f"test {name}", source=line))
                    break
            else:
                for rx in _DIAGNOSTICS:
                    if m := rx.search(line):
                        path, msg = m.group("path"), m.group("msg").strip()
                        add(CheckFinding(check, _local(path), int(m.group("line")), msg, key=f"{path}: {msg}",
                                         source=line))
                        break
    return list(found.values())


def _pytest(check: str, m: re.Match[str], line: str) -> CheckFinding:
    node = m.group("id")
    path, _, name = node.partition("::")
    msg = (m.group("msg") or "").strip()
    if m.group("kind") == "FAILED":
        what = f"{name or path} failed"
    else:
        what = f"{name} errored" if name else "could not be collected"
    return CheckFinding(check, _local(path), None, f"{what}: {msg}" if msg else what, key=f"test {node}",
                        source=line)


def _unittest(check: str, m: re.Match[str], after: list[str], line: str) -> CheckFinding:
    """A unittest failure with the last frame of its traceback and the exception's line."""
    test = m.group("id")
    path: str | None = None
    number: int | None = None
    error = ""
    for follow in after[1:] if after and _UNITTEST_RULE.match(after[0]) else after:
        if _UNITTEST_RULE.match(follow) or _UNITTEST.match(follow):
            break
        if frame := _TRACEBACK_FILE.match(follow):
            if "site-packages" not in frame.group("path") and "/lib/python" not in frame.group("path"):
                path, number = _local(frame.group("path")), int(frame.group("line"))
        elif follow.strip() and not follow.startswith((" ", "\t", "Traceback")):
            error = follow.strip()
    what = f"{test} {'failed' if m.group('kind') == 'FAIL' else 'errored'}"
    return CheckFinding(check, path, number, f"{what}: {error}" if error else what, key=f"test {test}", source=line)


def check_findings(result: CheckResult) -> list[CheckFinding]:
    """What a failing or warning check found, from the tail of its output; a check whose output
    names nothing gets one finding with its note and last line. Secrets stay cut to a preview."""
    if result.status not in ("fail", "warn"):
        return []
    lines = [line for line in result.output.splitlines() if line.strip() and not _CUT.match(line)]
    if result.kind == "builtin":
        found = [_builtin(result.name, line) for line in lines]
    elif result.output.startswith(NEW_FAILURES):
        found = _new_failures(result.name, result.output[len(NEW_FAILURES):])
    else:
        found = parse_output(result.output, result.name)
    if not found:
        last = lines[-1].strip() if lines else ""
        message = ": ".join(part for part in (result.note, last) if part) or result.status
        found = [CheckFinding(result.name, None, None, message)]
    shown = [replace(f, path=f.path and redact_secrets(f.path), message=redact_secrets(f.message),
                     status=result.status) for f in found[:MAX_FINDINGS]]
    if len(found) > MAX_FINDINGS:
        shown.append(CheckFinding(result.name, None, None, f"… and {len(found) - MAX_FINDINGS} more", result.status))
    return shown


def _builtin(check: str, line: str) -> CheckFinding:
    m = _BUILTIN.match(line)
    if m is None:
        return CheckFinding(check, None, None, line.strip(), source=line)
    return CheckFinding(check, m.group("path"), int(m.group("line")) if m.group("line") else None, m.group("msg"),
                        source=line)


def _new_failures(check: str, judged: str) -> list[CheckFinding]:
    """The failures a branch adds to its base's (gate/baseline.py lists their identities, then the
    tail of the output): each as the output reports it, file and line included, when it is there."""
    listed, _, rest = judged.lstrip("\n").partition("\n\n")
    reported = {normalise_paths(f.key): f for f in parse_output(rest, check)}
    lines = {line_key(line): line.strip() for line in rest.splitlines() if line.strip()}
    found = []
    for key in (line.strip() for line in listed.splitlines() if line.strip() and not _CUT.match(line)):
        if key in reported:
            found.append(reported[key])
        elif key in lines:   # an unknown tool's line, as it printed it
            found.append(CheckFinding(check, None, None, lines[key]))
        elif key.startswith("test "):
            path, _, name = key[5:].partition("::")
            found.append(CheckFinding(check, _local(path) if name else None, None, f"{name or path} failed"))
        else:
            found.append(CheckFinding(check, None, None, key.replace(CHECKOUT + "/", "")))
    return found


def line_key(line: str) -> str:
    """How a line of an unknown tool's output is compared: where it ran and every number (timings,
    counts, line numbers) set aside."""
    return _DIGITS.sub("#", normalise_paths(line).strip())


def findings(report: GateReport) -> list[CheckFinding]:
    """Every failing check's findings, then every warning's, in the report's order."""
    return [f for status in ("fail", "warn") for r in report.results if r.status == status
            for f in check_findings(r)]


def findings_of(gate_json: str | None) -> list[CheckFinding]:
    """The findings of a gate report kept as JSON (an attempt's `gate`), none without one."""
    return findings(GateReport.from_json(gate_json)) if gate_json else []
