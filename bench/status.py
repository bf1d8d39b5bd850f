"""How long wswarm's read-only commands take, next to a Python that does nothing.

    .venv/bin/python bench/status.py [--tasks 50] [--repeat 11] [--wait-idle S] [--wswarm PATH] [--json] [--keep]

Builds one finished run of N one-file tasks in a temporary repository with the real command line
(`wswarm start --plan`, a shell agent), then runs, in rounds, `python -c pass` (the same interpreter
wswarm runs on), `wswarm --version`, `--help`, `status`, `status --json` and `logs TASK`, each as a
whole process with stdout and stderr to pipes. Every round runs every command once, in a rotated
order, so load from other processes falls on all of them alike. It prints each command's median
wall time, the spread (min to max, and the interquartile range), and its ratio to `python -c pass`.

Standard library only. Speed is judged from this output, on one machine in one run; never in tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import wait_for_idle

AGENT_CMD = 'echo "changed by $WSWARM_TASK_ID" >> "src/$WSWARM_TASK_ID.txt"'
_GIT_LEAKS = ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_OBJECT_DIRECTORY")


class BenchError(Exception):
    """The bench could not build its run, or a command failed."""


def default_wswarm() -> Path:
    """This checkout's venv, so the bench measures the code beside it."""
    return Path(__file__).resolve().parent.parent / ".venv" / "bin" / "wswarm"


def interpreter(wswarm: Path) -> str:
    """The Python the wswarm script runs on (its #! line): the baseline must start the same one."""
    first = wswarm.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    return first[2:].strip() if first.startswith("#!") and "python" in first else sys.executable


def bench_env(home: Path) -> dict[str, str]:
    """No user or system git config; an identity; a private HOME."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LEAKS}
    config = home / ".gitconfig"
    config.write_text("[user]\n\tname = Bench\n\temail = bench@example.invalid\n[init]\n\tdefaultBranch = main\n",
                      encoding="utf-8")
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=str(config), GIT_TERMINAL_PROMPT="0")
    return env


def run(argv: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return res


def finished_run(root: Path, *, tasks: int, wswarm: Path, env: dict[str, str]) -> Path:
    """A repository with one finished run of TASKS merged one-file tasks; returns the repository."""
    repo = root / "repo"
    (repo / "src").mkdir(parents=True)
    run(["git", "init", "-q"], cwd=repo, env=env)
    ids = [f"t{i:03d}" for i in range(tasks)]
    for tid in ids:
        (repo / "src" / f"{tid}.txt").write_text(f"file {tid}\n", encoding="utf-8")
    run(["git", "add", "-A"], cwd=repo, env=env)
    run(["git", "commit", "-q", "-m", "files"], cwd=repo, env=env)
    plan = root / "plan.json"
    plan.write_text(json.dumps([{"id": tid, "description": f"append a line to src/{tid}.txt",
                                 "files": [f"src/{tid}.txt"]} for tid in ids]), encoding="utf-8")
    run([str(wswarm), "start", "--plan", str(plan), "--agents", "2", "--max-attempts", "1",
         "--agent-cmd", AGENT_CMD], cwd=repo, env=env)
    status = json.loads(run([str(wswarm), "status", "--json"], cwd=repo, env=env).stdout)
    merged = sum(t["status"] == "merged" for t in status["tasks"])
    if status["state"] != "finished" or merged != tasks:
        raise BenchError(f"the run did not finish with every task merged: {status['state']}, {merged}/{tasks}")
    return repo


def commands(wswarm: Path, python: str, task: str) -> dict[str, list[str]]:
    w = str(wswarm)
    return {"python -c pass": [python, "-c", "pass"],
            "wswarm --version": [w, "--version"],
            "wswarm --help": [w, "--help"],
            "wswarm status": [w, "status"],
            "wswarm status --json": [w, "status", "--json"],
            f"wswarm logs {task}": [w, "logs", task],
            "python -c 'import typer' (reference)": [python, "-c", "import typer"]}


def measure(cmds: dict[str, list[str]], *, repeat: int, cwd: Path, env: dict[str, str],
            wait_idle: float) -> dict[str, list[float]]:
    """Wall seconds of each command, REPEAT rounds; each round runs all of them in a rotated order,
    after waiting up to WAIT_IDLE seconds for the other processes to leave the CPUs idle."""
    names = list(cmds)
    for name in names:   # a first run of each fills the page cache; not counted
        run(cmds[name], cwd=cwd, env=env)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        if wait_idle:
            wait_for_idle(wait_idle)
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            run(cmds[name], cwd=cwd, env=env)
            times[name].append(time.perf_counter() - start)
    return times


def summary(times: dict[str, list[float]]) -> list[dict[str, float | str]]:
    base = statistics.median(times["python -c pass"])
    rows: list[dict[str, float | str]] = []
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) >= 2 else [ts[0], ts[0], ts[0]]
        rows.append({"command": name, "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                     "iqr_s": q[2] - q[0], "ratio": statistics.median(ts) / base})
    return rows


def table(rows: list[dict[str, float | str]], *, repeat: int, tasks: int, load: tuple[float, float]) -> str:
    width = max(len(str(r["command"])) for r in rows)
    lines = [f"{tasks}-task finished run; {repeat} rounds; load average {load[0]:.2f} before, {load[1]:.2f} after",
             f"{'command':<{width}}  {'median':>8}  {'min':>7}  {'max':>7}  {'IQR':>6}  {'× python':>8}"]
    for r in rows:
        lines.append(f"{r['command']:<{width}}  {1000 * float(r['median_s']):6.1f}ms  {1000 * float(r['min_s']):5.1f}ms  "
                     f"{1000 * float(r['max_s']):5.1f}ms  {1000 * float(r['iqr_s']):4.1f}ms  {float(r['ratio']):7.2f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", "-n", type=int, default=50, help="tasks in the finished run (default 50)")
    parser.add_argument("--repeat", "-r", type=int, default=11, help="rounds (default 11; at least 5)")
    parser.add_argument("--wswarm", type=Path, default=default_wswarm(), metavar="PATH",
                        help="the wswarm executable (default: this checkout's venv)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each round, wait up to SECONDS for other processes to leave the CPUs idle "
                             "(for shared machines; default 0: do not wait)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the generated repository")
    args = parser.parse_args(argv)
    if args.repeat < 5 or args.tasks < 1:
        parser.error("--repeat must be at least 5 and --tasks at least 1")
    root = Path(tempfile.mkdtemp(prefix="wswarm-bench-status-"))
    try:
        (root / "home").mkdir()
        env = bench_env(root / "home")
        repo = finished_run(root, tasks=args.tasks, wswarm=args.wswarm, env=env)
        before = os.getloadavg()[0]
        times = measure(commands(args.wswarm, interpreter(args.wswarm), "t000"), repeat=args.repeat,
                        cwd=repo, env=env, wait_idle=args.wait_idle)
        load = (before, os.getloadavg()[0])
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = summary(times)
    if args.json:
        print(json.dumps({"tasks": args.tasks, "repeat": args.repeat, "load_average": load, "rows": rows,
                          "seconds": times}, indent=2))
    else:
        print(table(rows, repeat=args.repeat, tasks=args.tasks, load=load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
