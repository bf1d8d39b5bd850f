"""What the commands in `cli.py` say at the terminal beyond a line, and the one question they ask: the
planned plan shown for confirmation, the end of a run they drove, the hook's note on fast-forward
merges, why a task has no log yet."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from worktree_swarm import output
from worktree_swarm.cli_common import call

if TYPE_CHECKING:
    from worktree_swarm.planner.model import Planned


def plan_for_start(goal: str | None, *, base: str, model: str | None, max_tokens: int | None,
                   agent_cmd: str | None, yes: bool) -> Planned:
    """The plan `start GOAL` runs: the model's, shown, and confirmed unless YES; declined, it is saved
    for editing and the command exits 2."""
    from worktree_swarm.planner import model as planner
    from worktree_swarm.util.errors import UsageError

    def check() -> None:
        if goal is None:
            raise UsageError("give a goal for the planner or a plan file",
                             hint='wswarm start "GOAL", or: wswarm start --plan plan.json')
        if not yes and not sys.stdin.isatty():
            raise UsageError("a planned run needs your confirmation, and there is no terminal to ask on",
                             hint='pass --yes to run the plan unseen, or review it first: '
                                  'wswarm plan "GOAL" -o plan.json, then wswarm start --plan plan.json')

    call(check)
    assert goal is not None
    planned = call(lambda: planner.plan_goal(cwd=Path.cwd(), goal=goal, base=base, model=model,
                                             max_tokens=max_tokens, agent_cmd=agent_cmd, check_agents=True,
                                             notify=output.notify))
    show_plan(planned)
    if not yes and not typer.confirm(f"Run these {len(planned.plan)} tasks?", default=True, err=True):
        saved = call(lambda: planner.save_plan(cwd=Path.cwd(), plan=planned.plan))
        output.notify(f"not started; the plan is saved in {saved}")
        output.notify(f"hint: edit it if you like, then: wswarm start --plan {saved}")
        raise typer.Exit(2)
    return planned


def show_plan(planned: Planned) -> None:
    """The planned tasks as a table on stderr, and what planning them cost."""
    from rich.table import Table
    from rich.text import Text

    err = output.stderr_console()
    table = Table(box=None, pad_edge=False)
    for col in ("id", "type", "after", "files", "description"):
        table.add_column(col, overflow="fold")
    # The model wrote these: text, never rich markup (`src/[id].tsx`, `dict[str, int]`, `[/]`).
    for task in planned.plan:
        table.add_row(*(Text(cell) for cell in (task.id, task.type, ", ".join(task.dependencies),
                                                 ", ".join(task.files), task.description)))
    err.print(table)
    err.print(f"planner: {planned.model}, {planned.input_tokens} input + {planned.output_tokens} output tokens, "
              f"${planned.cost_usd:.4f}" + (" (after one repair round)" if planned.rounds > 1 else ""), markup=False)


def finish(result: object) -> None:
    """The end of a run a command drove (a `RunResult`): its verdict and branch on stderr, the PR
    body's path on stdout; exits with the run's code."""
    from worktree_swarm.swarm.session import RunResult

    assert isinstance(result, RunResult)
    err = output.stderr_console()
    verdict = "every task merged" if result.all_merged else "finished with failed or blocked tasks"
    err.print(f"run {result.run_id}: {verdict}", markup=False)
    err.print(f"integration branch: {result.integration_branch}", markup=False)
    output.emit(str(result.pr_path))
    raise typer.Exit(result.exit_code)


def fast_forward_note(cwd: Path) -> str:
    """git runs pre-merge-commit only when a merge makes a merge commit; say what merge.ff means for it."""
    from worktree_swarm.util import proc

    ff = proc.git("config", "--get", "merge.ff", cwd=cwd, check=False, as_configured=True).stdout.strip().lower()
    note = "note: git runs this hook only for merges that make a merge commit; a fast-forward merge skips it"
    if ff == "false":
        return note + " (merge.ff = false here: every merge makes one)"
    if ff == "only":
        return note + ", and merge.ff = only here allows nothing else: the hook never runs"
    return note + (" (to gate every merge here: git config merge.ff false, so git merge and git pull always "
                   "make a merge commit; or merge with --no-ff)")


def no_logs_yet(task: str, status: str, *, following: bool) -> str:
    """Why a task has no log to show, instead of a blank screen."""
    if status == "pending":
        what = f"task {task} has not started yet (it waits for its dependencies or a free agent)"
    elif status == "blocked":
        what = f"task {task} never started: a task it depends on failed"
    else:
        what = f"task {task} has no logs yet ({status})"
    return what + ("; waiting for its output (Ctrl-C stops waiting)" if following else "")
