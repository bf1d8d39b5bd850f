"""What a round of conflict forecasts costs, and so how often forecasts come.

    python bench/forecast.py [--files M] [--agents K] [--repeat R] [--json]

One repository of M small files and K worktrees of it, each with one file changed and half of them
changing the same file (so pairs are merged); then R rounds of what wswarm's forecaster does while
agents work: a snapshot of every worktree (through a temporary index) and the in-memory merges.
Printed: the CPU and wall time of one round, its parts, and the pause the forecaster takes after it
to stay under its share of one core (swarm/forecast.py CPU_SHARE), which is how stale a forecast can be.
Run with this checkout's venv (it imports worktree_swarm).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from machine import default_tmp, machine
from sides import bench_env, git, make_repo

from worktree_swarm.git.repo import Repo
from worktree_swarm.swarm import forecast as fc
from worktree_swarm.util.types import Sha


def cpu() -> float:
    """CPU seconds of this process and the git processes it waited for."""
    import resource
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50_000, metavar="M")
    parser.add_argument("--agents", type=int, default=8, metavar="K")
    parser.add_argument("--repeat", type=int, default=5, metavar="R")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tmp", type=Path, default=default_tmp())
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="wswarm-bench-forecast-", dir=args.tmp))
    env = bench_env(root)
    repo_path = root / "repo"
    base = make_repo(repo_path, files=args.files, date=int(time.time()) - 3600, env=env)
    made = time.monotonic()
    worktrees = []
    for i in range(args.agents):
        wt = root / f"wt{i}"
        git("worktree", "add", "-q", "-b", f"a{i}", str(wt), base, cwd=repo_path, env=env)
        # half the agents change one shared file, the others a file of their own
        target = wt / ("shared.txt" if i % 2 == 0 else f"own{i}.txt")
        target.write_text(f"agent {i}\n")
        worktrees.append(wt)
    setup_s = time.monotonic() - made
    repo = Repo.discover(repo_path)
    rounds = []
    for _ in range(args.repeat):
        c0, w0 = cpu(), time.monotonic()
        snaps = {(f"t{i}", 1): (Sha(base), fc.snapshot(repo, wt)) for i, wt in enumerate(worktrees)}
        w1 = time.monotonic()
        result = fc.forecast(repo, Sha(base), {k: (s, Sha(str(c))) for k, (s, c) in snaps.items() if c})
        w2, c2 = time.monotonic(), cpu()
        rounds.append({"wall_s": w2 - w0, "cpu_s": c2 - c0, "snapshots_s": w1 - w0, "merges_s": w2 - w1,
                       "forecasts": len(result.forecasts)})
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    pause = min(fc.MAX_INTERVAL, max(fc.MIN_INTERVAL, med["wall_s"] / fc.CPU_SHARE - med["wall_s"]))
    out = {"files": args.files, "agents": args.agents, "repeat": args.repeat, "setup_s": round(setup_s, 1),
           "round": {k: round(v, 4) for k, v in med.items()},
           "round_max_wall_s": round(max(r["wall_s"] for r in rounds), 4),
           "pause_s": round(pause, 2), "share_of_a_core": round(med["cpu_s"] / (med["wall_s"] + pause), 4),
           "machine": machine(root, None)}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        r = out["round"]
        print(f"{args.files} files, {args.agents} running worktrees, {args.repeat} rounds (medians)\n"
              f"  one round: {r['wall_s'] * 1000:.0f} ms wall, {r['cpu_s'] * 1000:.0f} ms CPU "
              f"(snapshots {r['snapshots_s'] * 1000:.0f} ms, merges {r['merges_s'] * 1000:.0f} ms), "
              f"{r['forecasts']:g} forecasts\n"
              f"  pause after it: {out['pause_s']} s -> forecasts at most {out['pause_s'] + r['wall_s']:.1f} s old, "
              f"{out['share_of_a_core'] * 100:.1f}% of one core\n"
              f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
