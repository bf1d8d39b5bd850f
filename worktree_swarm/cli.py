"""The `wswarm` command line.

Each command imports what it needs inside its body: `--help` and the read-only commands must not
pay for pygit2, the model client or the live view. (`status --json` and `--version` are answered
before this module is loaded at all: see `__main__`.)"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from worktree_swarm import __version__, output
from worktree_swarm.cli_common import Command, Group, MaxTokensOpt, ModelOpt, RunArg, call, watch
from worktree_swarm.cli_show import fast_forward_note, finish, no_logs_yet, plan_for_start, show_plan

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=Group,
                  help="Run many coding agents on one repository: a task DAG, a worktree per task, "
                       "a quality gate, an in-memory merge train, one combined PR.")
# Much of what these show was written by a model or an agent: never markup, never a control sequence.
out = output.console()
err = output.stderr_console()
EXIT_INTERNAL = output.EXIT_INTERNAL
_emit = output.emit
_write = output.write
_notify = output.notify


@app.command(cls=Command)
def start(
    goal: Annotated[str | None, typer.Argument(metavar="GOAL",
                                               help="What the swarm should achieve; a model plans it.")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", "-p", help="A plan file (JSON or TOML) to run.")] = None,
    title: Annotated[str | None, typer.Option(help="The run's and the PR's title. Default: the goal "
                                                   "(a plan file's \"goal\"), else the file's name.")] = None,
    base: Annotated[str, typer.Option(help="The commit tasks start from.")] = "HEAD",
    agents: Annotated[int | None, typer.Option(min=1, max=64, help="Agents at once on this machine (beside "
                                               "workers: none unless given).")] = None,
    max_attempts: Annotated[int | None, typer.Option(min=1, max=20, help="Attempts per task.")] = None,
    agent_cmd: Annotated[str | None, typer.Option(help="Command line run as each task's agent.")] = None,
    timeout: Annotated[float | None, typer.Option(min=1, help="Seconds an attempt may take.")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Run the planned plan without asking.")] = False,
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    max_cost: Annotated[float | None, typer.Option(min=0, metavar="USD",
                                                   help="Start no new attempt once the run has spent this.")] = None,
    redis: Annotated[str | None, typer.Option(metavar="URL", help="Run the attempts on workers (wswarm worker) "
                                                                 "through this Redis. Default: the distributed section of wswarm.toml.")] = None,
    remote: Annotated[str | None, typer.Option(metavar="NAME", help="For workers: the git remote they share "
                                                                    "code through. Default: origin.")] = None,
    lease: Annotated[float | None, typer.Option(min=1, metavar="SECONDS", help="For workers: how long one may "
                                                "stay silent before its attempt is taken back. Default: 30.")] = None,
    remote_agents: Annotated[int | None, typer.Option(min=1, metavar="N", help="Attempts on workers at once, "
                                                      "running or waiting for a free agent. Default: 32.")] = None,
) -> None:
    """Plan GOAL with the model (or take --plan), then run it: a worktree per task, the gate, one branch."""
    from worktree_swarm.commands import start as run
    from worktree_swarm.util.errors import UsageError

    def one_goal() -> None:
        if goal is not None and plan is not None:
            raise UsageError("give a goal or --plan, not both: a plan file is run as it is (its own \"goal\" "
                             "names the run; --title \"TITLE\" renames it)")

    call(one_goal)
    planned = None
    if plan is None:
        planned = plan_for_start(goal, base=base, model=model, max_tokens=max_tokens, agent_cmd=agent_cmd, yes=yes)
    options = run.StartOptions(plan_path=plan, plan=planned.plan if planned else None, base=base, agents=agents,
                               max_attempts=max_attempts, agent_cmd=agent_cmd, timeout=timeout,
                               title=title or goal, max_cost=max_cost,
                               planner_usage=planned.usage() if planned else None,
                               default_agent=planned.default_agent if planned else None,
                               redis_url=redis, remote=remote, lease=lease, remote_agents=remote_agents)
    result = call(lambda: run.start(cwd=Path.cwd(), options=options, notify=_notify,
                                     view=lambda store: watch(store, err)))
    finish(result)


@app.command("plan", cls=Command)
def plan_cmd(
    goal: Annotated[str, typer.Argument(metavar="GOAL", help="What the swarm should achieve.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the plan, with its goal, "
                                                "here (JSON).")] = None,
    base: Annotated[str, typer.Option(help="The commit the planner looks at (and tasks will start from).")] = "HEAD",
    model: ModelOpt = None,
    max_tokens: MaxTokensOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --output file.")] = False,
) -> None:
    """Only plan: the model writes the plan for you to review and edit, then run it with start --plan."""
    from worktree_swarm.planner import model as planner

    planned = call(lambda: planner.plan_to_file(cwd=Path.cwd(), goal=goal, output=output, force=force, base=base,
                                                 model=model, max_tokens=max_tokens, notify=_notify))
    show_plan(planned)
    if output is None:
        _emit(planned.plan.to_file_json())
    else:
        _notify(f"wrote {output}; run it with: wswarm start --plan {output}")


@app.command(cls=Command)
def resume(run_id: RunArg = None,
           ) -> None:
    """Continue an interrupted run; finished work is kept."""
    from worktree_swarm.commands import resume as run

    result = call(lambda: run.resume(cwd=Path.cwd(), run=run_id, notify=_notify,
                                      view=lambda store: watch(store, err)))
    finish(result)


@app.command(cls=Command)
def retry(
    run_id: Annotated[str | None, typer.Argument(metavar="RUN", show_default=False,
                                                 help="Default: the newest run.")] = None,
    tasks: Annotated[list[str] | None, typer.Argument(metavar="TASK", show_default=False,
                                                      help="Only these (and what they blocked). "
                                                           "Default: every failed task.")] = None,
    agent_cmd: Annotated[str | None, typer.Option(help="Command line run as each retried task's agent.")] = None,
    max_attempts: Annotated[int | None, typer.Option(min=1, max=20, help="Attempts each retried task gets now. "
                                                     "Default: the run's.")] = None,
    agents: Annotated[int | None, typer.Option(min=1, max=64, help="Agents at once. Default: the run's.")] = None,
) -> None:
    """New attempts for a finished run's failed tasks and the tasks they blocked, on its integration branch."""
    from worktree_swarm.commands import retry as run

    options = run.RetryOptions(run=run_id, tasks=tuple(tasks or ()), agent_cmd=agent_cmd,
                               max_attempts=max_attempts, agents=agents)
    result = call(lambda: run.retry(cwd=Path.cwd(), options=options, notify=_notify,
                                     view=lambda store: watch(store, err)))
    finish(result)


@app.command(cls=Command)
def status(
    run_id: RunArg = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object (with --all: an array of them).")] = False,
    all_runs: Annotated[bool, typer.Option("--all", help="List every run.")] = False,
    watch_: Annotated[bool, typer.Option("--watch", help="Follow the run live until it finishes or stops.")] = False,
) -> None:
    """Runs and their tasks; safe to use from another terminal during a run."""
    # `status --json [RUN]` and `status --all --json` usually never get here (see __main__); what
    # they print is made by the same functions either way.
    from worktree_swarm.commands.status import run_lines, status_view

    loaded = call(lambda: status_view(Path.cwd(), run_id, as_json=as_json, all_runs=all_runs, watch=watch_))
    if isinstance(loaded, dict):
        _emit(json.dumps(loaded, indent=2))
        return
    if isinstance(loaded, list):
        if as_json:
            _emit(json.dumps(loaded, indent=2))
        elif not loaded:
            _notify('no runs yet (start one with: wswarm start "GOAL", or wswarm demo)')
        for line in [] if as_json else run_lines(loaded):
            _emit(line)
        return
    from worktree_swarm.ui.live import attach, board

    try:
        if watch_:
            # A console that goes quiet when its reader does: `status --watch | head -2` ends with 0.
            attach(loaded, output.console(soft_wrap=False))
        else:
            out.print(board(loaded))
    finally:
        loaded.close()


@app.command(cls=Command)
def pr(
    run_id: RunArg = None,
    push: Annotated[str | None, typer.Option(metavar="REMOTE", help="Push the integration branch.")] = None,
    open_: Annotated[bool, typer.Option("--open", help="Open the PR with gh (needs --push).")] = False,
    title: Annotated[str | None, typer.Option(help="Retitle the run and its PR (kept for later pr and "
                                                   "status). Default: the run's title (start --title, or "
                                                   "its goal).")] = None,
) -> None:
    """Print the combined PR body; optionally push the branch and open the PR."""
    from worktree_swarm.commands import pr as prmod
    from worktree_swarm.util.errors import UsageError
    from worktree_swarm.git.repo import Repo
    from worktree_swarm.store.run_store import RunStore, find_run

    def go() -> str:
        # Refusals first: a refused command keeps the run's title as it was.
        if open_ and not push:
            raise UsageError("--open needs --push REMOTE: the branch must be on the remote first")
        kept = prmod.valid_title(title) if title is not None else None
        repo = Repo.discover(Path.cwd())
        store = RunStore.open(find_run(repo.state_dir, run_id))
        try:
            row = prmod.retitle(store, kept) if kept is not None else store.run()
            tasks = store.tasks()
            body = prmod.render_pr(row, tasks, store.attempts(), store.events())
        finally:
            store.close()
        if push:
            prmod.push(repo, remote=push, branch=row.integration_branch)
            _notify(f"pushed {row.integration_branch} to {push}")
        if open_:
            from worktree_swarm.store import layout
            path = store.dir / layout.PR_BODY
            path.write_text(body, encoding="utf-8")
            _notify(prmod.open_pr(repo, title=prmod.pr_title(row, tasks), body=path, base=prmod.base_name(row),
                                  branch=row.integration_branch))
        return body

    _emit(call(go))


@app.command(cls=Command)
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object: each run's figures and the total.")] = False,
) -> None:
    """What every run of this repository cost: attempts, waste by cause, holds, forecasts, clean runs."""
    from worktree_swarm.commands import stats as statsmod

    data = call(lambda: statsmod.stats(cwd=Path.cwd()))
    if as_json:
        _emit(json.dumps(data, indent=2))
    elif not data["runs"]:
        _notify('no runs yet (start one with: wswarm start "GOAL", or wswarm demo)')
    elif sys.stdout.isatty():
        out.print(statsmod.table(data))
        out.print(statsmod.summary(data))
    else:
        _emit(statsmod.render(data))


@app.command(cls=Command)
def clean(
    run_id: RunArg = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Every run of this repository.")] = False,
    integration: Annotated[bool, typer.Option("--integration", help="Delete the integration branch too.")] = False,
    forget: Annotated[bool, typer.Option("--forget", help="Delete the run's state and logs too.")] = False,
    slots: Annotated[bool, typer.Option("--slots", help="Remove the reusable worktree slots too.")] = False,
) -> None:
    """Remove a run's worktrees and task branches (the integration branch stays unless asked)."""
    from worktree_swarm.commands.clean import clean as do_clean

    done = call(lambda: do_clean(cwd=Path.cwd(), run=run_id, all_runs=all_runs, integration=integration,
                                  forget=forget, slots=slots))
    removed = f"{done.worktrees} worktrees, {done.branches} branches"
    if done.slots is not None:
        removed += f", {done.slots} slots"
    busy = f" ({done.slots_in_use} slots in use by a running wswarm were left alone)" if done.slots_in_use else ""
    _emit((f"cleaned {', '.join(done.runs)}: {removed} removed" if done.runs else f"removed {done.slots} slots") + busy)
    if done.slots_kept:
        _notify(f"kept {done.slots_kept} reusable worktree slot{'s' if done.slots_kept > 1 else ''} for the next "
                "runs; remove them with: wswarm clean --slots")


@app.command(cls=Command)
def logs(
    task: Annotated[str, typer.Argument(metavar="TASK", help="The task id.")],
    run_id: Annotated[str | None, typer.Option("--run", metavar="RUN", help="Default: the newest run.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new output and new attempts "
                                         "until the task is settled or the run stops.")] = False,
) -> None:
    """Print a task's attempt logs (agent output, setup and gate checks)."""
    from worktree_swarm.git.repo import Repo
    from worktree_swarm.store.run_store import RunStore, find_run
    from worktree_swarm.commands.logs import LogFollower, log_files

    def go() -> None:
        store = RunStore.open(find_run(Repo.discover(Path.cwd()).state_dir, run_id))
        try:
            row = store.task(task)
            if not log_files(store, task):
                _notify(no_logs_yet(task, row.status, following=follow and store.is_live()))
            follower = LogFollower(store, task, _write)
            if follow:
                follower.follow()
            else:
                follower.step()
                follower.finish()
        finally:
            store.close()

    call(go)


@app.command(cls=Command)
def dashboard(
    run_id: RunArg = None,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port on 127.0.0.1; 0 picks a free one.")] = 8767,
    no_open: Annotated[bool, typer.Option("--no-open", help="Do not open a web browser.")] = False,
) -> None:
    """The web command center on 127.0.0.1: agents, tasks, the DAG, conflicts, diffs and spend, live."""
    from worktree_swarm.ui.dashboard import open_browser, open_dashboard

    server = call(lambda: open_dashboard(cwd=Path.cwd(), run=run_id, port=port))
    _emit(server.url)
    _notify(f"dashboard of run {server.run} at {server.url} (Ctrl-C stops it)")
    if not no_open:
        open_browser(server.url)
    server.serve()


@app.command(cls=Command)
def demo(
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to build the sample repository.")] = None,
) -> None:
    """A complete swarm on a throwaway sample repository with scripted agents; no API key."""
    from worktree_swarm.commands import demo as demomod

    result = call(lambda: demomod.run_demo(directory=directory, notify=_notify,
                                            view=lambda store: watch(store, err)))
    _emit(result.pr_body)
    err.print(f"sample repository: {result.repo}", markup=False)
    err.print(f"integration branch: {result.integration_branch} "
              f"(try: git -C {result.repo} log --oneline --graph {result.integration_branch})", markup=False)
    raise typer.Exit(result.exit_code)


@app.command(cls=Command)
def gate(
    ref: Annotated[str | None, typer.Option("--ref", metavar="REF",
                                            help="Judge this commit, checked out in a temporary worktree.")] = None,
    staged: Annotated[bool, typer.Option("--staged", help="Judge the index: what the next commit records.")] = False,
    base: Annotated[str | None, typer.Option("--base", metavar="REF", help=(
        "Judge against this commit (its merge-base when it is not an ancestor). Default: HEAD for the "
        "index and the working tree; for --ref, its merge-base with origin/HEAD, main or master."))] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON object.")] = False,
) -> None:
    """Run the gate on a ref, on the index (--staged), or by default on the working tree.

    Exit 0 when it passes, 1 when a check fails, 2 for bad input.
    """
    from worktree_swarm.commands.gate import gate as run_gate

    # Inside git's hooks GIT_INDEX_FILE names the index being committed (relative to the cwd git gave us).
    index = os.environ.get("GIT_INDEX_FILE") if staged else None
    outcome = call(lambda: run_gate(cwd=Path.cwd(), ref=ref, staged=staged, base=base,
                                     index_file=Path.cwd() / index if index else None))
    if outcome.detected:
        _notify(outcome.detected)
    if as_json:
        _notify(outcome.headline)
        _emit(outcome.report.to_json())
    else:
        _emit(f"{outcome.headline}\n{outcome.report.render()}")
    raise typer.Exit(0 if outcome.report.passed else 1)


hook_app = typer.Typer(no_args_is_help=True, cls=Group, help="git's pre-merge-commit hook: the gate before every merge commit.")
app.add_typer(hook_app, name="hook")


@hook_app.command("install", cls=Command)
def hook_install() -> None:
    """Install the pre-merge-commit hook for every worktree of this repository (an existing hook is chained)."""
    from worktree_swarm.commands import hook as hooks

    done = call(lambda: hooks.install(cwd=Path.cwd(), python=sys.executable))
    where = done.location
    _notify(f"{'reinstalled' if done.reinstalled else 'installed'} the pre-merge-commit hook at {where.path}")
    if where.hooks_path is not None:
        _notify(f"core.hooksPath is set to {where.hooks_path}: installed there, where git looks for hooks")
        if not Path(where.hooks_path).expanduser().is_absolute():
            _notify("note: a relative core.hooksPath is resolved in each worktree's root, so other worktrees "
                    "look in their own folder")
    if done.chained is not None:
        _notify(f"your previous hook is kept as {done.chained} and runs first; its failure blocks the merge too")
    _notify(fast_forward_note(Path.cwd()))


@hook_app.command("uninstall", cls=Command)
def hook_uninstall() -> None:
    """Remove wswarm's pre-merge-commit hook and restore the hook it replaced."""
    from worktree_swarm.commands import hook as hooks

    done = call(lambda: hooks.uninstall(cwd=Path.cwd()))
    if done.removed:
        _notify(f"removed the pre-merge-commit hook at {done.location.path}")
    else:
        _notify(f"wswarm: {done.reason}")
    if done.restored:
        _notify(f"restored your previous hook at {done.location.path}")


def _version(value: bool) -> None:
    if value:
        _emit(f"wswarm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    pass


@app.command(cls=Command)
def worker(
    redis: Annotated[str, typer.Option(metavar="URL", help="The Redis the integrator sends attempts through.")],
    repo: Annotated[str, typer.Option(metavar="GIT_URL", help="The git remote of the repository to work on.")],
    agents: Annotated[int, typer.Option(min=1, max=64, help="Attempts at once on this machine.")] = 2,
    name: Annotated[str | None, typer.Option(help="This worker's name. Default: HOST-PID.")] = None,
    directory: Annotated[Path | None, typer.Option("--dir", metavar="PATH",
                                                   help="This worker's clone (made when missing).")] = None,
    agent_cmd: Annotated[str | None, typer.Option(help="Command line run as the agent of tasks naming none.")] = None,
) -> None:
    """Run attempts of any run of one repository, sent by `wswarm start --redis`, until stopped."""
    from worktree_swarm.commands import worker as workermod
    from worktree_swarm.remote.worker import stderr_say

    options = workermod.WorkerOptions(redis_url=redis, repo_url=repo, agents=agents, name=name, dir=directory,
                                      agent_cmd=agent_cmd)
    call(lambda: workermod.worker(options=options, say=stderr_say))


@app.command(cls=Command)
def workers(
    redis: Annotated[str, typer.Option(metavar="URL", help="The Redis workers report to.")] = "redis://127.0.0.1:6379/0",
) -> None:
    """The workers seen lately: machine, repository, agents busy, last heartbeat, load."""
    from worktree_swarm.commands import workers as workersmod

    rows = call(lambda: workersmod.workers(redis_url=redis))
    typer.echo(workersmod.render(rows) if rows else "no workers seen (start one with: wswarm worker --redis URL "
                                                      "--repo GIT_URL)")


def main() -> None:
    try:
        # The same usage lines whether run as `wswarm` or `python -m worktree_swarm` (as the hook runs it).
        app(prog_name="wswarm")
    except KeyboardInterrupt:
        sys.exit(130)
