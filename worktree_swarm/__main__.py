"""`wswarm` and `python -m worktree_swarm`: the command line's entry point.

Loading typer alone takes longer than `status --json` needs in all, and scripts and editors call
that one often. So `status --json [RUN]`, `status --all --json` and `--version`, spelled plainly,
are answered here without typer, with the same core functions, output and exit codes as
`cli.py`; every other command line (a typo, `--help`, an option written as `--json=...`) goes to
typer, which parses it and reports errors as usual.
"""

from __future__ import annotations

import sys


def fast_status(args: list[str]) -> tuple[str | None, bool] | None:
    """(RUN or None, --all) when ARGS is a plain `status --json` that needs no parser; else None.

    Plain: `status`, then `--json` once, at most one `--all` and at most one RUN, in any order.
    Anything else, even what typer would accept, is left to typer."""
    if not args or args[0] != "status":
        return None
    rest = args[1:]
    if rest.count("--json") != 1 or rest.count("--all") > 1:
        return None
    runs = [a for a in rest if a not in ("--json", "--all")]
    if len(runs) > 1 or any(not a or a.startswith("-") for a in runs):
        return None
    return (runs[0] if runs else None), "--all" in rest


def main() -> None:
    """Run the command line in sys.argv."""
    args = sys.argv[1:]
    if args == ["--version"]:
        from worktree_swarm import __version__, output

        output.emit(f"wswarm {__version__}")
        return
    status = fast_status(args)
    if status is None:
        from worktree_swarm.cli import main as typer_main

        typer_main()
        return
    try:
        code = _status_json(*status)
    except KeyboardInterrupt:   # while printing: as cli.main does
        code = 130
    sys.exit(code)


def _status_json(run_id: str | None, all_runs: bool) -> int:
    """`wswarm status --json`: what the typer command prints, and its exit code."""
    import json
    from pathlib import Path

    from worktree_swarm import output

    try:
        from worktree_swarm.commands.status import all_status, run_status

        data: object = all_status(Path.cwd()) if all_runs else run_status(Path.cwd(), run_id)
    except (Exception, KeyboardInterrupt) as exc:
        return output.failed(exc)
    output.emit(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    main()
