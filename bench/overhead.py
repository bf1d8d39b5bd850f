"""wswarm's overhead over raw git, measured side by side in one run.

    python bench/overhead.py [--tasks N ...] [--files M] [--agents K ...] [--repeat R] [--json]

For every (N, K) and every repeat, two identical repositories of M small files are generated; on
one, `wswarm start` runs a plan of N independent tasks (task i appends a line to its own file)
with K agents; on the other, a minimal raw-git orchestrator does the same work with K threads:
worktree add, the same agent command, add + commit, then (one at a time) merge-tree + commit-tree +
a compare-and-swap update-ref, and worktree remove (with --baseline slot: one worktree per thread,
switched per task with checkout --force -B + clean, the limit of a loop that reuses worktrees).
Printed side by side: wall time and its ratio, CPU time and its ratio, wswarm's start-up time and
peak RSS, and how busy other processes kept the machine meanwhile. Both integration trees must be equal and every task merged, or the bench fails.

Standard library only; wswarm runs as a subprocess (this checkout's venv by default). See README.md.
"""

from __future__ import annotations
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from machine import QUIET_CORES, cpu_seconds, default_tmp, machine, machine_busy, read_trace, wait_for_idle
from sides import (AGENT_CMD, BASELINES, BenchError, bench_env, check_result, find_wswarm, make_repo, run_raw,
                   run_wswarm, task_ids, warm_up, write_plan)


@dataclass
class Pair:
    raw: float
    wswarm: float
    raw_cpu: float
    wswarm_cpu: float
    startup: float | None
    drive: float | None
    exit: float | None
    peak_rss_mb: float | None
    order: str
    # Cores kept busy by other processes on the machine while each side ran: wall times are only
    # comparable when both are near 0. CPU seconds are much less sensitive to it.
    raw_other_cores: float
    wswarm_other_cores: float

    @property
    def ratio(self) -> float:
        return self.wswarm / self.raw

    @property
    def cpu_ratio(self) -> float:
        return self.wswarm_cpu / self.raw_cpu


@dataclass
class Case:
    tasks: int
    files: int
    agents: int
    baseline: str
    pairs: list[Pair] = field(default_factory=list)
    # side -> git command -> [processes, seconds], summed over the repeats (with --git-trace)
    git: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {"raw": {}, "wswarm": {}})

    def summary(self) -> dict[str, object]:
        def stats(values: list[float]) -> dict[str, float]:
            return {"median": statistics.median(values), "min": min(values), "max": max(values)}

        overhead = [(p.wswarm - p.raw) / self.tasks * 1000 for p in self.pairs]
        quiet = [p for p in self.pairs if max(p.raw_other_cores, p.wswarm_other_cores) < QUIET_CORES]
        rss = [p.peak_rss_mb for p in self.pairs if p.peak_rss_mb is not None]
        startup = [p.startup for p in self.pairs if p.startup is not None]
        return {"tasks": self.tasks, "files": self.files, "agents": self.agents, "baseline": self.baseline,
                "repeats": len(self.pairs),
                "raw_s": stats([p.raw for p in self.pairs]), "wswarm_s": stats([p.wswarm for p in self.pairs]),
                "ratio": stats([p.ratio for p in self.pairs]), "overhead_ms_per_task": stats(overhead),
                "quiet_pairs": len(quiet),
                "ratio_quiet": stats([p.ratio for p in quiet]) if quiet else None,
                "raw_cpu_s": stats([p.raw_cpu for p in self.pairs]),
                "wswarm_cpu_s": stats([p.wswarm_cpu for p in self.pairs]),
                "cpu_ratio": stats([p.cpu_ratio for p in self.pairs]),
                "wswarm_startup_s": stats(startup) if startup else None,
                "wswarm_peak_rss_mb": stats(rss) if rss else None,
                "git_per_task": {side: {name: {"processes": c / n, "ms": 1000 * t / n}
                                         for name, (c, t) in sorted(by.items(), key=lambda kv: -kv[1][1])}
                                  for side, by in self.git.items() if by
                                  for n in [self.tasks * len(self.pairs)]},
                "runs": [dict(asdict(p), ratio=p.ratio, cpu_ratio=p.cpu_ratio) for p in self.pairs]}


def measure(case: Case, *, repeat: int, root: Path, wswarm: list[str], env: dict[str, str], date: int,
            keep: bool, git_trace: bool, wait_idle: float) -> None:
    ids = task_ids(case.tasks, case.files)
    for r in range(repeat):
        here = root / f"n{case.tasks}-m{case.files}-k{case.agents}-r{r}"
        raw_repo, ws_repo = here / "raw", here / "wswarm"
        base = make_repo(raw_repo, files=case.files, date=date, env=env)
        if make_repo(ws_repo, files=case.files, date=date, env=env) != base:
            raise BenchError("the two generated repositories differ; their commits should be identical")
        plan = here / "plan.json"
        write_plan(plan, ids)
        # Alternate which side goes first: this filesystem is slower right after mass file churn.
        order = "raw,wswarm" if r % 2 == 0 else "wswarm,raw"
        raw_s = raw_cpu = ws = None
        other: dict[str, float] = {}
        for side in order.split(","):
            os.sync()
            if wait_idle > 0 and (load := wait_for_idle(wait_idle)) >= QUIET_CORES:
                print(f"  the machine is still busy ({load:.1f} cores) after {wait_idle:g}s; measuring anyway",
                      file=sys.stderr)
            if side == "raw":
                busy0 = machine_busy()
                t0, cpu0 = time.perf_counter(), cpu_seconds()
                raw_branch = run_raw(raw_repo, ids, agents=case.agents, base=base, env=env,
                                     baseline=case.baseline, trace=here / "trace-raw.json" if git_trace else None)
                raw_s, raw_cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
                other[side] = max(0.0, machine_busy() - busy0 - raw_cpu) / raw_s
            else:
                ws = run_wswarm(wswarm, ws_repo, plan, agents=case.agents, env=env, log=here / "wswarm.log",
                                trace=here / "trace-wswarm.json" if git_trace else None)
                other[side] = ws.other_cores
        assert raw_s is not None and raw_cpu is not None and ws is not None
        raw_tree = check_result(raw_repo, base=base, ref=raw_branch, ids=ids, env=env, side="raw git")
        ws_tree = check_result(ws_repo, base=base, ref=ws.integration, ids=ids, env=env, side="wswarm")
        if raw_tree != ws_tree:
            raise BenchError(f"integration trees differ: raw git {raw_tree}, wswarm {ws_tree}")
        if git_trace:
            for side in ("raw", "wswarm"):
                for name, (count, secs) in read_trace(here / f"trace-{side}.json").items():
                    total = case.git[side].setdefault(name, [0, 0.0])
                    total[0] += count
                    total[1] += secs
        pair = Pair(raw_s, ws.seconds, raw_cpu, ws.cpu, ws.startup, ws.drive, ws.exit, ws.peak_rss_mb, order,
                    other["raw"], other["wswarm"])
        case.pairs.append(pair)
        print(f"  N={case.tasks} M={case.files} K={case.agents} #{r + 1}: raw {raw_s:.2f}s, "
                  f"wswarm {ws.seconds:.2f}s, ratio {pair.ratio:.3f}; "
              f"CPU raw {raw_cpu:.2f}s, wswarm {ws.cpu:.2f}s, ratio {pair.cpu_ratio:.3f}; "
              f"other load {other['raw']:.2f}/{other['wswarm']:.2f} cores ({order})", file=sys.stderr, flush=True)
        if not keep:
            shutil.rmtree(here)


def render(cases: list[Case], info: dict[str, object]) -> str:
    def fmt(s: object, spec: str) -> str:
        assert isinstance(s, dict)
        return f"{s['median']:{spec}} ({s['min']:{spec}}–{s['max']:{spec}})"

    lines = [f"wswarm overhead vs raw git ({cases[0].baseline} worktrees) — {info['date']}, {info['cores']} cores, {info['git']}, "
             f"Python {info['python']}, repositories on {info['filesystem']}, wswarm at {info['wswarm_commit']}",
             "median (min–max) over the repeats; ratio = wswarm / raw git wall time; CPU ratio = the same for "
             "user+system seconds; ms/task = (wswarm − raw) / N; other = cores busy with other processes "
             "(raw/wswarm side, median): wall times are only comparable near 0; quiet pairs = both sides under "
             f"{QUIET_CORES} other cores",
             "",
             f"{'N':>5} {'M':>6} {'K':>2} {'R':>2}  {'raw git s':<19} {'wswarm s':<19} {'ratio':<19} "
             f"{'CPU ratio':<19} {'ms/task':<14} {'startup':>7} {'RSS MB':>6} {'other':>9}  ratio, quiet pairs"]
    for case in cases:
        s = case.summary()
        startup, rss = s["wswarm_startup_s"], s["wswarm_peak_rss_mb"]
        other = (f"{statistics.median(p.raw_other_cores for p in case.pairs):.1f}/"
                 f"{statistics.median(p.wswarm_other_cores for p in case.pairs):.1f}")
        lines.append(
            f"{case.tasks:>5} {case.files:>6} {case.agents:>2} {len(case.pairs):>2}  "
            f"{fmt(s['raw_s'], '.2f'):<19} {fmt(s['wswarm_s'], '.2f'):<19} {fmt(s['ratio'], '.3f'):<19} "
            f"{fmt(s['cpu_ratio'], '.3f'):<19} {fmt(s['overhead_ms_per_task'], '.0f'):<14} "
            f"{(format(startup['median'], '.2f') + 's' if isinstance(startup, dict) else '?'):>7} "
            f"{(format(rss['median'], '.0f') if isinstance(rss, dict) else '?'):>6} {other:>9}  "
            + (f"{fmt(s['ratio_quiet'], '.3f')} ×{s['quiet_pairs']}" if s["ratio_quiet"] else "none"))
    for case in cases:
        per_task = case.summary()["git_per_task"]
        assert isinstance(per_task, dict)
        for side, by in per_task.items():
            procs = sum(v["processes"] for v in by.values())
            ms = sum(v["ms"] for v in by.values())
            lines += ["", f"git processes per task, {side} (N={case.tasks}, K={case.agents}): {procs:.1f} processes, "
                          f"{ms:.0f} ms of git wall time (summed over processes, some run in parallel)"]
            lines += [f"  {name:<22} {v['processes']:5.2f} × {v['ms'] / v['processes']:6.1f} ms = {v['ms']:6.1f} ms"
                      for name, v in by.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", "-n", type=int, nargs="+", default=[50], metavar="N",
                        help="tasks per run; several values make several rows (default 50)")
    parser.add_argument("--files", "-m", type=int, default=5000, metavar="M",
                        help="files in the generated repository (default 5000)")
    parser.add_argument("--agents", "-k", type=int, nargs="+", default=[2], metavar="K",
                        help="tasks at once, the same on both sides (default 2)")
    parser.add_argument("--repeat", "-r", type=int, default=3, metavar="R", help="pairs per row (default 3)")
    parser.add_argument("--baseline", choices=BASELINES, default="fresh",
                        help="the raw-git side: a fresh worktree per task (default), or one kept worktree per "
                             "thread switched with checkout --force -B + clean (the limit for wswarm's slots)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--wswarm", metavar="PATH",
                        help="the wswarm executable (default: the venv's, i.e. this checkout's code); e.g. a "
                             "wrapper running a snapshot of one commit while the checkout is being edited")
    parser.add_argument("--git-trace", action="store_true",
                        help="record every git process of both sides (GIT_TRACE2_EVENT) and print them per task")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="before each side, wait up to SECONDS for other processes to leave the CPUs "
                             "idle (for shared machines; default 0: do not wait)")
    parser.add_argument("--keep", action="store_true", help="keep the generated repositories")
    parser.add_argument("--tmp", type=Path, default=default_tmp(), metavar="DIR",
                        help="where to generate them (default: /dev/shm when it exists, else the system "
                             "temp dir; pass --tmp /tmp to measure on disk)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or any(n < 1 for n in args.tasks) or any(k < 1 for k in args.agents):
        parser.error("--tasks, --agents and --repeat must be at least 1")
    if any(n > args.files for n in args.tasks):
        parser.error("each task changes its own file: --tasks must not exceed --files")
    try:
        wswarm = find_wswarm(args.wswarm)
        root = Path(tempfile.mkdtemp(prefix="wswarm-bench-", dir=args.tmp))
        env = bench_env(root)
        # One fixed, past date for the generated commit: both sides get identical repositories.
        date = int(time.time()) - 3600
        info = machine(root, args.wswarm)
        print(f"repositories under {root} on {info['filesystem']}", file=sys.stderr)
        cases = [Case(n, args.files, k, args.baseline) for n in args.tasks for k in args.agents]
        try:
            warm_up(wswarm, root, env=env)
            for case in cases:
                measure(case, repeat=args.repeat, root=root, wswarm=wswarm, env=env, date=date,
                        keep=args.keep, git_trace=args.git_trace, wait_idle=args.wait_idle)
        finally:
            if args.keep:
                print(f"repositories kept in {root}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"machine": info, "agent_cmd": AGENT_CMD, "cases": [c.summary() for c in cases]},
                         indent=2))
    else:
        print(render(cases, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
