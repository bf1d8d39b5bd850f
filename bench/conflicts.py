"""Conflict awareness: attempts wasted on conflicts today against the defaults, in one run.

    .venv/bin/python bench/conflicts.py [--tasks 40] [--collide 0.25] [--agents 4 ...] [--repeat 3] [--json]

A generated repository (one dated commit of small files, then a dated commit of the run's wswarm.toml)
and a generated workload of N tasks with no declared dependencies. A share of them (--collide) come in
pairs that rewrite the same line of the same file; the rest each rewrite a line of a file of their own.
Partners sit 1-3 places apart in plan order, as a planner lists related work, so with several agents
they tend to run side by side. Each task's agent is one script (`--agent-cmd`) that learns its file,
line, duration and steps from a folder of task files generated here ($WSWARM_TASK_ID names its file):
in each of its steps it sleeps, then re-reads the file and rewrites its own line (a progress marker,
then the final `+TASK` word), so a retry from a newer head succeeds and two partners' words end up
side by side on the line.

Two policies run on identical repositories, alternating which goes first:
  today     [scheduler] overlap = "ignore", forecast = false (no overlap awareness; retries at once)
  defaults  overlap = "avoid", forecast = true, on_forecast = "notify"
each once without declared `files` and once with every task declaring its one file. Both lift
`[limits] max_load`, so other processes on the machine do not change how many agents run. Measured per run:
wasted attempts (attempts started minus tasks merged, from `wswarm status --json`), makespan (wall time
of `wswarm start`), agent seconds wasted (started → finished of every attempt that did not merge, from
the run's state), every task merged, and the integration tree holding every task's word exactly once.
Targets: wasted attempts ≤ 1/3 of today's, makespan ≤ 1.1× today's, every task merged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from machine import default_tmp, machine, machine_busy
from sides import BenchError, bench_env, file_path, find_wswarm, git, make_repo

from worktree_swarm.store.run_store import RunStore

# Admission control would start fewer agents while other processes load this shared machine
# (max_load is per CPU): lifted on both sides, so the policies are compared at the same concurrency.
LIMITS = '[limits]\nmax_load = 1000\n'
POLICIES = {
    "today": '[scheduler]\noverlap = "ignore"\nforecast = false\n' + LIMITS,
    "defaults": '[scheduler]\noverlap = "avoid"\nforecast = true\non_forecast = "notify"\n' + LIMITS,
}
LINE = 3            # the line (0-based) a task rewrites: "line 3 of file J" in make_repo's files

# The agent: standard library only, run by this interpreter. argv[1] is the folder of task files.
AGENT = '''\
import json, os, subprocess, sys, time
from pathlib import Path

tid = os.environ["WSWARM_TASK_ID"]
spec = json.loads((Path(sys.argv[1]) / (tid + ".json")).read_text())
path, steps = Path(spec["file"]), spec["steps"]


def rewrite(mark):
    # Re-read what the worktree holds now and rewrite only this task's word on its line.
    lines = path.read_text().splitlines(keepends=True)
    words = [w for w in lines[spec["line"]].rstrip("\\n").split(" ")
             if w != "+" + tid and not w.startswith("+" + tid + "~")]
    lines[spec["line"]] = " ".join(words + ["+" + tid + mark]) + "\\n"
    path.write_text("".join(lines))


def catch_up(seen, mark):
    # News of a merge (--agent-news): put the file back, fast-forward the branch to the merged head,
    # and rewrite this task's line on top of it, as notify asks of an agent.
    news = os.environ.get("WSWARM_NEWS")
    items = Path(news).read_text().splitlines() if news and os.path.isfile(news) else []
    heads = [h for h in (json.loads(line).get("head") for line in items[seen:]) if h]
    if heads:
        subprocess.run(["git", "checkout", "-q", "--", str(path)], check=True)
        if subprocess.run(["git", "merge", "-q", "--ff-only", heads[-1]]).returncode == 0:
            print("%s: brought in %s" % (tid, heads[-1]))
        if mark is not None:
            rewrite(mark)
    return len(items)


seen, mark = 0, None
for step in range(1, steps + 1):
    time.sleep(spec["seconds"] / steps)
    if spec["news"]:
        seen = catch_up(seen, mark)
    mark = "" if step == steps else "~%d/%d" % (step, steps)
    rewrite(mark)
print("%s: rewrote line %d of %s in %d steps" % (tid, spec["line"], path, steps))
'''


@dataclass(frozen=True)
class Task:
    id: str
    file: str
    seconds: float
    partner: str | None


def workload(n: int, collide: float, lo: float, hi: float, seed: int) -> list[Task]:
    """N tasks in plan order; round(N * COLLIDE / 2) pairs share a file, each partner 1-3 places after
    its mate; every other task has a file of its own."""
    rng = random.Random(seed)
    pairs = round(n * collide / 2)
    slots: list[int | None] = [None] * n
    free = list(range(n))
    rng.shuffle(free)
    for p in range(pairs):
        for first in free:
            second = next((first + d for d in rng.sample((1, 2, 3), 3)
                           if first + d < n and slots[first + d] is None), None)
            if slots[first] is None and second is not None:
                slots[first] = slots[second] = p
                break
        else:
            raise BenchError(f"cannot place {pairs} colliding pairs among {n} tasks")
    ids = [f"t{i:02d}" for i in range(n)]
    own = iter(range(pairs, pairs + n))
    tasks = []
    for i, tid in enumerate(ids):
        pair = slots[i]
        mates = [ids[j] for j in range(n) if j != i and pair is not None and slots[j] == pair]
        tasks.append(Task(tid, file_path(pair if pair is not None else next(own)), round(rng.uniform(lo, hi), 2),
                          mates[0] if mates else None))
    return tasks


@dataclass
class Run:
    policy: str
    declared: bool
    agents: int
    repeat: int
    seconds: float             # wall time of `wswarm start`
    all_merged: bool
    tree_ok: bool              # every task's word once on its line, no progress marker left
    attempts: int
    wasted: int                # attempts that did not merge
    agent_s: float             # started → finished, summed over every attempt
    wasted_agent_s: float      # … over the attempts that did not merge
    conflicts: int
    forecasts: int
    held: int
    news: int
    throttled: int             # times admission control held agents back (0 with the lifted limit)
    load1: float               # load average (1 min) when the run began
    other_cores: float         # cores other processes kept busy meanwhile


def make_case(root: Path, tasks: list[Task], *, policy: str, declared: bool, steps: int, news: bool,
              env: dict[str, str], date: int) -> tuple[Path, Path]:
    """A repository with POLICY's wswarm.toml committed, and its plan; the task files go in ROOT/spec."""
    repo = root / "repo"
    make_repo(repo, files=len(tasks), date=date, env=env)
    (repo / "wswarm.toml").write_text(POLICIES[policy], encoding="utf-8")
    git("add", "wswarm.toml", cwd=repo, env=env)
    git("commit", "-q", "-m", f"wswarm.toml: {policy}", cwd=repo, env=env)
    spec = root / "spec"
    spec.mkdir(exist_ok=True)
    for t in tasks:
        (spec / f"{t.id}.json").write_text(json.dumps({"file": t.file, "line": LINE, "seconds": t.seconds,
                                                       "steps": steps, "news": news}), encoding="utf-8")
    plan = root / "plan.json"
    plan.write_text(json.dumps([{"id": t.id, "description": f"rewrite line {LINE} of {t.file}",
                                 **({"files": [t.file]} if declared else {})} for t in tasks], indent=1),
                    encoding="utf-8")
    return repo, plan


def check_tree(repo: Path, ref: str, tasks: list[Task], env: dict[str, str]) -> bool:
    """Every task's word exactly once on its line of the integration branch, no marker of a step."""
    for t in tasks:
        words = git("show", f"{ref}:{t.file}", cwd=repo, env=env).splitlines()[LINE].split(" ")
        if words.count(f"+{t.id}") != 1 or any("~" in w for w in words):
            return False
    return True


def run_case(wswarm: list[str], root: Path, tasks: list[Task], *, policy: str, declared: bool, agents: int,
             repeat: int, steps: int, news: bool, max_attempts: int, env: dict[str, str], date: int,
             keep: bool) -> Run:
    repo, plan = make_case(root, tasks, policy=policy, declared=declared, steps=steps, news=news, env=env,
                           date=date)
    agent = f"{shlex.quote(sys.executable)} {shlex.quote(str(root.parent / 'agent.py'))} {shlex.quote(str(root / 'spec'))}"
    argv = [*wswarm, "start", "--plan", str(plan), "--agents", str(agents), "--max-attempts", str(max_attempts),
            "--agent-cmd", agent]
    load1 = os.getloadavg()[0]
    with open(root / "wswarm.log", "wb") as out:
        busy0, t0 = machine_busy(), time.perf_counter()
        child = subprocess.Popen(argv, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
        _, _, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        other = max(0.0, machine_busy() - busy0 - usage.ru_utime - usage.ru_stime) / seconds
    # A task that failed makes `start` exit non-zero: that is a result here, not a bench failure.
    res = subprocess.run([*wswarm, "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"wswarm status --json exited {res.returncode}: {(res.stdout + res.stderr)[-2000:]}\n"
                         f"wswarm start's output: {root / 'wswarm.log'}")
    status = json.loads(res.stdout)
    merged = sum(1 for t in status["tasks"] if t["status"] == "merged")
    attempts = sum(int(t["attempts"] or 0) for t in status["tasks"])
    run_dir = repo / ".git" / "wswarm" / "runs" / status["run"]
    store = RunStore.open(run_dir)
    try:
        rows = store.attempts()
    finally:
        store.close()
    spans = [(a.outcome, (a.finished or a.started) - a.started) for a in rows]
    kinds = [json.loads(line)["kind"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    run = Run(policy=policy, declared=declared, agents=agents, repeat=repeat, seconds=seconds,
              all_merged=merged == len(tasks) and status["state"] == "finished",
              tree_ok=check_tree(repo, status["integration_branch"], tasks, env),
              attempts=attempts, wasted=attempts - merged, agent_s=sum(s for _, s in spans),
              wasted_agent_s=sum(s for kind, s in spans if kind != "merged"),
              conflicts=kinds.count("conflict"), forecasts=kinds.count("conflict-forecast"),
              held=kinds.count("held"), news=kinds.count("news"),
              throttled=kinds.count("waiting-for-resources"), load1=load1, other_cores=other)
    if not keep:
        shutil.rmtree(root)
    return run


def summary(runs: list[Run]) -> list[dict[str, object]]:
    """Per (agents, declared): medians per policy and the defaults' ratios to today's."""
    out: list[dict[str, object]] = []
    for k in sorted({r.agents for r in runs}):
        for declared in (False, True):
            row: dict[str, object] = {"agents": k, "declared": declared}
            for policy in POLICIES:
                mine = [r for r in runs if (r.agents, r.declared, r.policy) == (k, declared, policy)]
                if not mine:
                    continue
                row[policy] = {
                    "runs": len(mine),
                    "wasted": statistics.median(r.wasted for r in mine),
                    "wasted_all": [r.wasted for r in mine],
                    "seconds": statistics.median(r.seconds for r in mine),
                    "wasted_agent_s": statistics.median(r.wasted_agent_s for r in mine),
                    "agent_s": statistics.median(r.agent_s for r in mine),
                    "all_merged": all(r.all_merged and r.tree_ok for r in mine),
                    "forecasts": statistics.median(r.forecasts for r in mine),
                    "held": statistics.median(r.held for r in mine),
                    "news": statistics.median(r.news for r in mine),
                    "load1": statistics.median(r.load1 for r in mine),
                    "other_cores": statistics.median(r.other_cores for r in mine),
                }
            if "today" in row and "defaults" in row:
                today, new = row["today"], row["defaults"]
                assert isinstance(today, dict) and isinstance(new, dict)
                row["wasted_ratio"] = new["wasted"] / today["wasted"] if today["wasted"] else None
                makespan = new["seconds"] / today["seconds"]
                row["makespan_ratio"] = makespan
                row["met"] = {"wasted": new["wasted"] <= today["wasted"] / 3,
                              "makespan": makespan <= 1.1,
                              "all_merged": bool(today["all_merged"] and new["all_merged"])}
            out.append(row)
    return out


def render(rows: list[dict[str, object]], info: dict[str, object], head: str) -> str:
    lines = [f"conflict awareness, today (overlap=ignore) vs defaults — {info['date']}, {info['cores']} cores, "
             f"{info['git']}, Python {info['python']}, wswarm at {info['wswarm_commit']}", head,
             "medians over the repeats; wasted = attempts that did not merge (each run's values in brackets); "
             "load = 1-min load average at each run's start; other = cores other processes kept busy", "",
             f"{'K':>2} {'files':<8} {'policy':<9} {'wasted':<14} {'makespan s':>10} {'agent s wasted':>14} "
             f"{'of agent s':>10} {'merged':>6} {'fcasts':>6} {'held':>5} {'news':>5} {'load':>5} {'other':>5}"]
    for row in rows:
        for policy in POLICIES:
            s = row.get(policy)
            if not isinstance(s, dict):
                continue
            lines.append(f"{row['agents']:>2} {'declared' if row['declared'] else 'none':<8} {policy:<9} "
                         f"{s['wasted']:<4g} {str(s['wasted_all']):<9} {s['seconds']:>10.1f} "
                         f"{s['wasted_agent_s']:>14.1f} {s['agent_s']:>10.1f} {'all' if s['all_merged'] else 'NO':>6} "
                         f"{s['forecasts']:>6g} {s['held']:>5g} {s['news']:>5g} {s['load1']:>5.1f} "
                         f"{s['other_cores']:>5.2f}")
        if "makespan_ratio" in row:
            wr = row["wasted_ratio"]
            met = row["met"]
            assert isinstance(met, dict)
            lines.append(f"{'':>2} {'':<8} {'ratio':<9} wasted {('%.2f' % wr) if isinstance(wr, float) else 'n/a':<7}"
                         f" makespan {row['makespan_ratio']:.3f}; targets: wasted ≤ 1/3 "
                         f"{'met' if met['wasted'] else 'MISSED'}, makespan ≤ 1.1 "
                         f"{'met' if met['makespan'] else 'MISSED'}, every task merged "
                         f"{'met' if met['all_merged'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", "-n", type=int, default=40, metavar="N", help="tasks per run (default 40)")
    parser.add_argument("--collide", type=float, default=0.25, metavar="SHARE",
                        help="share of the tasks in colliding pairs (default 0.25)")
    parser.add_argument("--agents", "-k", type=int, nargs="+", default=[4], metavar="K",
                        help="agents at once; several values make several rows (default 4)")
    parser.add_argument("--repeat", "-r", type=int, default=3, metavar="R", help="runs per cell (default 3)")
    parser.add_argument("--min", type=float, default=1.5, help="shortest agent, seconds (default 1.5)")
    parser.add_argument("--max", type=float, default=4.5, help="longest agent, seconds (default 4.5)")
    parser.add_argument("--steps", type=int, default=3, help="edits per agent, spread over its time (default 3)")
    parser.add_argument("--files", choices=("none", "declared", "both"), default="both",
                        help="runs without declared `files`, with them, or both (default)")
    parser.add_argument("--agent-news", action="store_true",
                        help="agents also act on $WSWARM_NEWS: on news of a merge they fast-forward their branch "
                             "to the merged head and rewrite their line on top of it")
    parser.add_argument("--on-forecast", choices=("notify", "restart"), default="notify",
                        help="the compared side's on_forecast (default notify, the default)")
    parser.add_argument("--max-attempts", type=int, default=5, metavar="A", help="attempts per task (default 5)")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the generated repositories")
    parser.add_argument("--tmp", type=Path, default=default_tmp(), metavar="DIR",
                        help="where to generate them (default /dev/shm when it exists)")
    args = parser.parse_args(argv)
    POLICIES["defaults"] = POLICIES["defaults"].replace('on_forecast = "notify"', f'on_forecast = "{args.on_forecast}"')
    if args.tasks < 2 or args.repeat < 1 or args.steps < 1 or any(k < 1 for k in args.agents):
        parser.error("--tasks must be at least 2, --repeat, --steps and --agents at least 1")
    if not 0 <= args.collide <= 1 or not 0 < args.min <= args.max:
        parser.error("--collide must be within 0..1 and 0 < --min <= --max")
    declared = {"none": [False], "declared": [True], "both": [False, True]}[args.files]
    try:
        tasks = workload(args.tasks, args.collide, args.min, args.max, args.seed)
        wswarm = find_wswarm(None)
        root = Path(tempfile.mkdtemp(prefix="wswarm-bench-conflicts-", dir=args.tmp))
        env = bench_env(root)
        (root / "agent.py").write_text(AGENT, encoding="utf-8")
        date = int(time.time()) - 3600
        info = machine(root, None)
        work = sum(t.seconds for t in tasks)
        pairs = sorted({tuple(sorted((t.id, t.partner))) for t in tasks if t.partner})
        head = (f"N={args.tasks}, {len(pairs)} colliding pairs {pairs}, agents {args.min:g}-{args.max:g} s in "
                f"{args.steps} steps (work {work:.0f} s){', acting on news' if args.agent_news else ''}, --max-attempts {args.max_attempts}, seed {args.seed}")
        print(head, file=sys.stderr)
        runs: list[Run] = []
        try:
            for k in args.agents:
                for r in range(args.repeat):
                    for d in declared:
                        # Alternate which policy goes first, so drifting load falls on both alike.
                        for policy in (("today", "defaults") if (r + d) % 2 == 0 else ("defaults", "today")):
                            here = root / f"k{k}-r{r}-{'declared' if d else 'none'}-{policy}"
                            here.mkdir()
                            run = run_case(wswarm, here, tasks, policy=policy, declared=d, agents=k, repeat=r,
                                           steps=args.steps, news=args.agent_news, max_attempts=args.max_attempts, env=env, date=date,
                                           keep=args.keep)
                            runs.append(run)
                            print(f"  K={k} #{r + 1} files={'declared' if d else 'none'} {policy}: "
                                  f"{run.seconds:.1f} s, wasted {run.wasted} of {run.attempts} attempts "
                                  f"({run.wasted_agent_s:.1f} agent s), merged {'all' if run.all_merged else 'NOT ALL'}"
                                  f"{'' if run.tree_ok else ', TREE WRONG'}; {run.forecasts} forecasts, "
                                  f"{run.held} held, {run.news} news, throttled {run.throttled}×; load {run.load1:.1f}, "
                                  f"other {run.other_cores:.2f} cores", file=sys.stderr, flush=True)
        finally:
            if args.keep:
                print(f"repositories kept in {root}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    rows = summary(runs)
    if args.json:
        print(json.dumps({"machine": info, "workload": head, "summary": rows, "runs": [asdict(r) for r in runs]},
                         indent=2))
    else:
        print(render(rows, info, head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
