"""The combined pull request: its body (pure rendering), pushing the branch, opening it with gh."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from worktree_swarm.util import proc
from worktree_swarm.util.errors import CommandError, UsageError
from worktree_swarm.gate.report import GateReport, findings_of
from worktree_swarm.git.repo import Repo
from worktree_swarm.store.metrics import Figures, run_figures
from worktree_swarm.store.run_store import AttemptRow, RunRow, RunStore, TaskRow
from worktree_swarm.commands.status import last_finished, last_session, session_id
from worktree_swarm.util.textsafe import md_cell, md_code, md_fence, md_text, one_line
from worktree_swarm.ui.describe import base_failing_text

_MARK = {"merged": "✅ merged", "failed": "❌ failed", "blocked": "⛔ blocked"}


_CAUSES = {"conflict": "conflict", "gate": "gate failed", "agent": "agent failed", "timeout": "timed out",
           "no_op": "no-op", "ejected": "ejected", "error": "error"}


def clean_run_ratio(tasks: Sequence[TaskRow], attempts: Sequence[AttemptRow]) -> tuple[int, int]:
    """(tasks merged on their first attempt, interrupted attempts aside; all tasks)."""
    return run_figures(tasks, attempts, (), state="finished").first_try, len(tasks)


def base_name(run: RunRow) -> str:
    """The branch (or ref) the run started from, as the PR's base."""
    return str(run.options.get("base_branch") or run.base_ref)


def pr_title(run: RunRow, tasks: Sequence[TaskRow]) -> str:
    """The PR's title as plain text (one line); the body shows it escaped as its heading."""
    merged = sum(t.status == "merged" for t in tasks)
    goal = one_line(str(run.options.get("title") or run.id)).strip()
    return f"wswarm: {goal} ({merged}/{len(tasks)} tasks)"


def valid_title(title: str) -> str:
    """TITLE as the run will keep it (one line, trimmed); a blank one is a UsageError."""
    kept = one_line(title).strip()
    if not kept:
        raise UsageError("the PR title is empty", hint='give one, e.g. --title "Add a /health endpoint", '
                         "or leave --title out to keep the run's title")
    return kept


def retitle(store: RunStore, title: str) -> RunRow:
    """Keep TITLE (already through `valid_title`) as the run's title: a later `pr` and `status --json`
    name the run by it. Only metadata: a finished run, or one still going, can be retitled."""
    row = store.run()
    options = {**row.options, "title": title}
    store.set_run(options=json.dumps(options))
    return dataclasses.replace(row, options=options)


def render_pr(run: RunRow, tasks: Sequence[TaskRow], attempts: Sequence[AttemptRow],
              events: Sequence[Mapping[str, Any]] = ()) -> str:
    """The Markdown body of the combined PR; EVENTS add what the run noticed beside the tasks.

    Task ids, types and descriptions come from a plan a model may have written, summaries and check
    output from agents: all of it is escaped or fenced, so none of it can add structure (a heading,
    a table cell, a link, HTML) to the body."""
    by_task: dict[str, list[AttemptRow]] = {}
    for a in attempts:
        by_task.setdefault(a.task_id, []).append(a)
    merged = [t for t in tasks if t.status == "merged"]
    clean, total = clean_run_ratio(tasks, attempts)
    lines = [f"# {md_text(pr_title(run, tasks))}", ""]
    lines.append(f"Integration branch {md_code(run.integration_branch)}, based on {md_code(base_name(run))} "
                 f"({md_code(run.base[:12])}). {len(merged)} of {len(tasks)} tasks merged; clean-run ratio "
                 f"**{clean}/{total}** ({_pct(clean, total)}) merged on their first attempt.")
    spent = bool(run.cost_usd or any(t.cost_usd for t in tasks))
    if spent:
        lines.append(spend_line(run, tasks, attempts))
    cost_head, cost_rule = (" cost |", "---|") if spent else ("", "")
    lines += ["", "## Tasks", "", f"| task | type | status | attempts | files | lines |{cost_head}",
              f"|---|---|---|---|---|---|{cost_rule}"]
    plan = {t["id"]: t for t in json.loads(run.plan)}
    for t in tasks:
        final = _final(by_task.get(t.id, []), t)
        files = json.loads(final.files) if final and final.files else []
        added = final.added if final and final.added is not None else 0
        removed = final.removed if final and final.removed is not None else 0
        cells = [md_cell(t.id, code=True), md_cell(str(plan.get(t.id, {}).get("type", ""))),
                 md_cell(_MARK.get(t.status, t.status))]
        lines.append(f"| {' | '.join(cells)} | {t.attempts} | {len(files)} | +{added} −{removed} |"
                     + (f" ${t.cost_usd:.2f} |" if spent else ""))
    if run.merge_gate:
        verdict = GateReport.from_json(run.merge_gate)
        lines += ["", "## Merge-result gate", "", f"On the integration head: {md_text(verdict.summary())}"]
        if verdict.verdict == "unverified":
            missed = [md_text(f"{r.name} did not run ({r.note or 'no reason given'})")
                      for r in verdict.results if r.status == "not-run"]
            lines += ["", "**Unverified:** " + "; ".join(missed)
                      + ". Nothing failed, but the merged result was not fully checked."]
        if not verdict.passed:
            lines += ["", md_fence(verdict.render()[:4000])]
    gates = [(t, _final(by_task.get(t.id, []), t)) for t in merged]
    if gates:
        lines += ["", "## Gate", ""]
        for t, final in gates:
            if final and final.gate:
                lines.append(f"- {md_code(t.id)}: {md_text(GateReport.from_json(final.gate).summary())}")
                lines += finding_lines(final.gate)
    requeues = [a for a in attempts if a.outcome not in ("merged", "running", "interrupted") and
                not (a.task_id in {t.id for t in tasks if t.status == "failed"} and
                     a.n == max(x.n for x in by_task[a.task_id]))]
    if requeues:
        lines += ["", "## Re-queued attempts", ""]
        for a in requeues:
            lines.append(f"- {md_code(a.task_id)} attempt {a.n}: {md_text(a.outcome)} — "
                         f"{md_text(_one_line(a.reason))}")
            lines += finding_lines(a.gate)
            if session := session_id(a):
                lines.append(f"  - Claude Code session {md_code(session)}")
    trouble = [t for t in tasks if t.status in ("failed", "blocked")]
    if trouble:
        lines += ["", "## Not merged", ""]
        for t in trouble:
            where = f" (kept for inspection: {md_code(t.branch)})" if t.status == "failed" and t.branch else ""
            lines.append(f"- {md_code(t.id)} {md_text(t.status)}: {md_text(_one_line(t.reason))}{where}")
            if t.status != "failed":
                continue
            last = last_finished(by_task.get(t.id, []))
            lines += finding_lines(last.gate if last else None)
            if session := last_session(by_task.get(t.id, [])):
                lines.append(f"  - Claude Code session {md_code(session)}: to look at the conversation or go on "
                             f"with it, run {md_code('claude --resume ' + session)} in the task's worktree "
                             "(`wswarm status` shows where it is)")
    shared = [e for e in events if e.get("kind") == "shared-state-changed"]
    moved = [e for e in events if e.get("kind") in ("integration-moved", "integration-restored")]
    base_failing = list({str(e.get("check")): e for e in events if e.get("kind") == "base-failing"}.values())
    if shared or moved or base_failing:
        lines += ["", "## Warnings", ""]
    for e in base_failing:
        text = base_failing_text(e)
        lines.append(f"- {md_text(text[0].upper() + text[1:])}.")
    for e in moved:
        if e.get("kind") == "integration-moved":
            lines.append(f"- The integration branch was moved by another process to {md_code(str(e.get('found')))} "
                         f"(wswarm had it at {md_code(str(e.get('expected')))}): the run stopped, and that commit "
                         "was not gated, merged or adopted.")
        else:
            lines.append(f"- The integration branch was deleted during the run and recreated at "
                         f"{md_code(str(e.get('head')))}.")
    if shared:
        lines += ["The user's checkout, refs, stash or git's own configuration changed during the run:", ""]
        for e in shared:
            who = ", ".join(md_code(str(a)) for a in e.get("agents_running") or []) or "no agent"
            lines.append(f"- while {who} ran: {md_text(_one_line(str(e.get('detail', ''))))}")
    lines += cost_section(run_figures(tasks, attempts, events, state=run.state, run=run.id), spent=spent)
    if merged:
        lines += ["", "## What each task did", ""]
        for t in merged:
            desc = str(plan.get(t.id, {}).get("description", ""))
            lines.append(f"### {md_code(t.id)} — {md_text(_one_line(desc))}")
            final = _final(by_task.get(t.id, []), t)
            if final and (session := session_id(final)):
                lines += ["", f"Claude Code session {md_code(session)}."]
            if t.summary:
                lines += ["", md_fence(t.summary.strip()[:2000])]
            lines.append("")
    lines += ["", f"<sub>Generated by wswarm for run {md_code(run.id)}.</sub>", ""]
    return "\n".join(lines)


def finding_lines(gate_json: str | None) -> list[str]:
    """An attempt's findings as sub-items: the check, where (file and line), what."""
    out = []
    for f in findings_of(gate_json):
        where = f" {md_code(f.where)}" if f.where else ""
        warning = " (warning)" if f.status == "warn" else ""
        out.append(f"  - {md_text(f.check)}{warning}{where}: {md_text(f.message)}")
    return out


def cost_section(f: Figures, *, spent: bool) -> list[str]:
    """The "What it cost" section: attempts, waste by cause with its time (and spend, when the run
    spent any), interrupted attempts, holds, and the conflict forecast's record (see store/metrics.py)."""
    if not f.attempts:
        return []
    per = f"{f.per_merged_task:.2f} per merged task" if f.per_merged_task is not None else "no task merged"
    verdict = ("The run completed cleanly: every task merged at its first attempt." if f.clean else
               "The run completed: every task merged, some after wasted attempts." if f.completed else
               f"The run did not complete: {f.merged} of {f.tasks} tasks merged.")
    lines = ["", "## What it cost", "",
             f"- Attempts: {f.attempts} for {f.tasks} tasks, {per}; {f.first_try} of {f.tasks} merged at their "
             f"first attempt. {verdict}"]
    waste = f"- Wasted attempts: {f.wasted_attempts}"
    if f.wasted_attempts:
        causes = ", ".join(f"{n} {_CAUSES.get(cause, cause)}" for cause, n in f.wasted.items() if n)
        waste += f" ({causes}) — {_duration(f.wasted_seconds)} of attempt time"
        waste += f", ${f.wasted_cost_usd:.2f} of model spend" if spent else ""
    lines.append(waste + ".")
    if f.interrupted:
        lines.append(f"- Interrupted attempts (not the tasks' fault, not counted as waste): {f.interrupted}, "
                     f"{_duration(f.interrupted_seconds)}" + (f", ${f.interrupted_cost_usd:.2f}" if spent else "") + ".")
    if f.held:
        (_, task), longest = max(f.held.items(), key=lambda kv: (kv[1], kv[0]))
        lines.append(f"- Held back (waiting for an overlapping task): {len(f.held)} task(s), "
                     f"{_duration(sum(f.held.values()))} in all; longest {md_code(task)}, {_duration(longest)}.")
    if f.forecast or f.unforecast:
        lines.append(f"- Conflict forecasts: {f.forecast_true} came true, {f.forecast_false} did not; "
                     f"{f.unforecast} conflict(s) came unforecast.")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def spend_line(run: RunRow, tasks: Sequence[TaskRow], attempts: Sequence[AttemptRow]) -> str:
    """What the run cost: dollars, the planner's share, tokens over every attempt."""
    usage = [json.loads(a.usage) for a in attempts if a.usage]
    tokens_in = sum(int(u.get("input_tokens", 0)) for u in usage)
    tokens_out = sum(int(u.get("output_tokens", 0)) for u in usage)
    planning = run.cost_usd - sum(t.cost_usd for t in tasks)
    parts = [f"Model spend: **${run.cost_usd:.2f}**"]
    if planning > 0.005:
        parts.append(f"(planning ${planning:.2f})")
    if tokens_in or tokens_out:
        parts.append(f"— {tokens_in:,} input and {tokens_out:,} output tokens over {len(usage)} attempt(s)")
    return " ".join(parts) + "."


def _final(attempts: list[AttemptRow], task: TaskRow) -> AttemptRow | None:
    if task.status == "merged":
        return next((a for a in reversed(attempts) if a.outcome == "merged"), None)
    return attempts[-1] if attempts else None


def _one_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "—"


def push(repo: Repo, *, remote: str, branch: str) -> None:
    """Push BRANCH to REMOTE under the same name."""
    known = repo.git("remote").stdout.split()
    if remote not in known:
        raise UsageError(f"there is no git remote named {remote!r}",
                         hint=f"known remotes: {', '.join(known) or 'none'}; add one with git remote add")
    try:
        repo.git("push", "--quiet", remote, f"refs/heads/{branch}:refs/heads/{branch}")
    except CommandError as exc:
        raise UsageError(f"git push to {remote!r} failed: {exc.output.strip().splitlines()[-1:]}") from None


def open_pr(repo: Repo, *, title: str, body: Path, base: str, branch: str) -> str:
    """Open the PR with the GitHub CLI; returns what gh printed (the PR's address)."""
    if shutil.which("gh") is None:
        raise UsageError("the GitHub CLI `gh` is not installed",
                         hint=f"install it from https://cli.github.com, or open a PR for {branch} by hand")
    res = proc.run("gh", "pr", "create", "--title", title, "--body-file", body, "--base", base, "--head",
                   branch, cwd=repo.root, check=False)
    if res.returncode != 0:
        raise UsageError(f"gh pr create failed: {(res.stderr or res.stdout).strip().splitlines()[-1:]}")
    return res.stdout.strip()
