"""How close wswarm's scheduling comes to the best possible: a DAG of tasks whose agents sleep for
known times.

    .venv/bin/python bench/makespan.py [--tasks 60] [--agents 4] [--min 1] [--max 5] [--repeat R] [--json]

A seeded random DAG of N tasks (each depends on up to 2 of the 12 tasks before it); task i's agent
is its plan `command`, `sleep D_i` and then one file written. The lower bound on any schedule is
max(critical path, total work / K). wswarm runs the plan with `--agents K`; its makespan is the time
from its `run-started` to its `run-finished` event (the whole command, start-up included, is
printed too). Also printed: what a zero-overhead scheduler with wswarm's own priority (longest
chain of dependents first) would achieve, so policy and overhead can be told apart. Target: achieved
/ bound ≤ 1.05.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine
from sides import BenchError, bench_env, find_wswarm, make_repo


def make_dag(n: int, lo: float, hi: float, seed: int) -> tuple[list[str], dict[str, list[str]], dict[str, float]]:
    rng = random.Random(seed)
    ids = [f"t{i:02d}" for i in range(n)]
    deps = {tid: sorted(set(rng.sample(ids[max(0, i - 12):i], min(i, rng.choice((0, 1, 1, 2))))))
            for i, tid in enumerate(ids)}
    durations = {tid: round(rng.uniform(lo, hi), 3) for tid in ids}
    return ids, deps, durations


def critical_path(ids: list[str], deps: dict[str, list[str]], dur: dict[str, float]) -> float:
    finish: dict[str, float] = {}
    for tid in ids:                      # ids are in topological order
        finish[tid] = dur[tid] + max((finish[d] for d in deps[tid]), default=0.0)
    return max(finish.values())


def chain_priority(ids: list[str], deps: dict[str, list[str]]) -> dict[str, int]:
    """Tasks on the longest chain of dependents (counted in tasks), as wswarm orders ready tasks."""
    children: dict[str, list[str]] = {tid: [] for tid in ids}
    for tid in ids:
        for d in deps[tid]:
            children[d].append(tid)
    prio: dict[str, int] = {}
    for tid in reversed(ids):
        prio[tid] = 1 + max((prio[c] for c in children[tid]), default=0)
    return prio


def simulate(ids: list[str], deps: dict[str, list[str]], dur: dict[str, float], agents: int) -> float:
    """The makespan of a zero-overhead list scheduler with wswarm's priority."""
    prio = chain_priority(ids, deps)
    order = {tid: i for i, tid in enumerate(ids)}
    done: set[str] = set()
    running: list[tuple[float, str]] = []
    started: set[str] = set()
    now = 0.0
    while len(done) < len(ids):
        ready = sorted((t for t in ids if t not in started and all(d in done for d in deps[t])),
                       key=lambda t: (-prio[t], order[t]))
        for tid in ready[:agents - len(running)]:
            heapq.heappush(running, (now + dur[tid], tid))
            started.add(tid)
        now, tid = heapq.heappop(running)
        done.add(tid)
    return now


def run_once(wswarm: list[str], root: Path, ids: list[str], deps: dict[str, list[str]], dur: dict[str, float],
             agents: int, env: dict[str, str]) -> dict[str, float]:
    repo = root / "repo"
    make_repo(repo, files=200, date=int(time.time()) - 3600, env=env)
    plan = root / "plan.json"
    # The command is this bench's own text (a plan the user wrote); the task id reaches it by env.
    plan.write_text(json.dumps([{"id": tid, "description": f"sleep {dur[tid]} s", "dependencies": deps[tid],
                                 "command": f'sleep {dur[tid]} && printf "%s\\n" "$WSWARM_TASK_ID" > '
                                            '"$WSWARM_TASK_ID.txt"'} for tid in ids]))
    t0 = time.time()
    res = subprocess.run([*wswarm, "start", "--plan", str(plan), "--agents", str(agents), "--max-attempts", "1"],
                         cwd=repo, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    total = time.time() - t0
    if res.returncode != 0:
        raise BenchError(f"wswarm exited {res.returncode}:\n{res.stderr[-2000:]}")
    status = json.loads(subprocess.run([*wswarm, "status", "--json"], cwd=repo, env=env, capture_output=True,
                                       text=True, check=True).stdout)
    if any(t["status"] != "merged" for t in status["tasks"]):
        raise BenchError("not every task merged")
    events = [json.loads(line) for line in
              (repo / ".git" / "wswarm" / "runs" / status["run"] / "events.jsonl").read_text().splitlines()]
    ts = {e["kind"]: e["ts"] for e in events if e["kind"] in ("run-started", "run-finished")}
    shutil.rmtree(repo)
    return {"makespan": ts["run-finished"] - ts["run-started"], "command": total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", "-n", type=int, default=60)
    parser.add_argument("--agents", "-k", type=int, default=4)
    parser.add_argument("--min", type=float, default=1.0, help="shortest agent sleep, seconds (default 1)")
    parser.add_argument("--max", type=float, default=5.0, help="longest agent sleep, seconds (default 5)")
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--repeat", "-r", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    ids, deps, dur = make_dag(args.tasks, args.min, args.max, args.seed)
    cp, work = critical_path(ids, deps, dur), sum(dur.values())
    bound = max(cp, work / args.agents)
    sim = simulate(ids, deps, dur, args.agents)
    print(f"{args.tasks} tasks, work {work:.1f} s, critical path {cp:.1f} s, work/K {work / args.agents:.1f} s: "
          f"bound {bound:.1f} s; zero-overhead list schedule {sim:.1f} s", file=sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="wswarm-bench-makespan-"))
    runs = []
    try:
        env = bench_env(root)
        wswarm = find_wswarm(None)
        for r in range(args.repeat):
            out = run_once(wswarm, root, ids, deps, dur, args.agents, env)
            runs.append(out)
            print(f"  #{r + 1}: makespan {out['makespan']:.2f} s ({out['makespan'] / bound:.3f}× the bound), "
                  f"whole command {out['command']:.2f} s", file=sys.stderr, flush=True)
        info = machine(root, None)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)

    def st(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    report = {"tasks": args.tasks, "agents": args.agents, "work_s": work, "critical_path_s": cp, "bound_s": bound,
              "list_schedule_s": sim, "makespan_s": st([r["makespan"] for r in runs]),
              "ratio": st([r["makespan"] / bound for r in runs]),
              "ratio_whole_command": st([r["command"] / bound for r in runs]),
              "ratio_to_list_schedule": st([r["makespan"] / sim for r in runs])}
    if args.json:
        print(json.dumps({"machine": info, **report}, indent=2))
    else:
        r, w, s = report["ratio"], report["ratio_whole_command"], report["ratio_to_list_schedule"]
        print(f"makespan / max(critical path, work/K) — {info['date']}, {info['cores']} cores, N={args.tasks}, "
              f"K={args.agents}, bound {bound:.1f} s\n"
              f"  achieved/bound {r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f}); whole command "
              f"{w['median']:.3f} ({w['min']:.3f}–{w['max']:.3f}); achieved/zero-overhead list schedule "
              f"{s['median']:.3f} ({s['min']:.3f}–{s['max']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
