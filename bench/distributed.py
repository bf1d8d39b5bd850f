"""Distributed runs against local ones, on this machine: one run of each, same plan, same concurrency.

    python bench/distributed.py [--tasks N] [--workers W] [--agents K] [--files M] [--json]

Starts its own redis-server (free port, temporary folder, append-only), a bare remote over file://,
W `wswarm worker` processes of K agents each (own clone and HOME), then runs a plan of N independent
tasks whose agents sleep 0.5-2 s (deterministic per task) and write one file: once with
`start --redis` and --agents W*K, once locally with --agents W*K in a second clone. Prints the
makespan of each and their ratio, dispatch latency p50/p99 of both (from the integrator's
attempt-started to the agent's first instruction, same clock; the agent is a shell script), the
integrator's merges per second of busy time, Redis commands per attempt (INFO commandstats), the
integrator's peak RSS, and the 1-minute load average before and after each run. Both integration trees must be equal and every task merged.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
WSWARM = [PY, "-m", "worktree_swarm"]
KEY = "bench-cluster-key-0123456789abcdef"

AGENT = """\
date +%s.%N > "$1/$WSWARM_TASK_ID-$WSWARM_ATTEMPT"
sleep "$(cat "$2/$WSWARM_TASK_ID")"
mkdir -p out && echo "$WSWARM_TASK_ID" > "out/$WSWARM_TASK_ID.txt"
"""


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_cmd(port: int, *words: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *words], check=True, capture_output=True, text=True).stdout


def commands(port: int) -> int:
    total = 0
    for line in redis_cmd(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_") and not line.startswith(("cmdstat_info", "cmdstat_ping")):
            total += int(line.split("calls=")[1].split(",")[0])
    return total


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and the peak RSS (MB) of the children waited for so far."""
    t = time.monotonic()
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:5])} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return time.monotonic() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def events(repo: Path) -> list[dict[str, object]]:
    [run_dir] = list((repo / ".git" / "wswarm" / "runs").iterdir())
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def dispatch(evs: list[dict[str, object]], marks: Path) -> list[float]:
    """Seconds from each attempt-started (the integrator's clock) to its agent's first instruction."""
    started = {(e["task"], e["attempt"]): float(e["ts"]) for e in evs if e["kind"] == "attempt-started"}  # type: ignore[arg-type]
    return sorted(float((marks / f"{t}-{n}").read_text()) - ts for (t, n), ts in started.items())


def pct(values: list[float], q: float) -> float:
    return round(1000 * values[min(len(values) - 1, int(len(values) * q))], 1)


def merges_per_second(evs: list[dict[str, object]]) -> float:
    """Merges per second of the integrator's busy time: each merge is charged the time from when its
    outcome could be taken (its worker's last event read, or the previous merge, whichever is later)
    to its `merged` event. That span holds the fetch of the task branch, the in-memory merge, and the
    launches (push of the start commit, request) done in between; waiting for agents is left out."""
    last_word: dict[object, float] = {}
    merged: list[tuple[float, object]] = []
    for e in evs:
        if e["kind"] in ("gate-finished", "agent-finished"):
            last_word[e["task"]] = float(e["ts"])  # type: ignore[arg-type]
        elif e["kind"] == "merged":
            merged.append((float(e["ts"]), e["task"]))  # type: ignore[arg-type]
    busy, previous = 0.0, 0.0
    for ts, task in sorted(merged, key=lambda m: m[0]):
        busy += ts - max(previous, last_word.get(task, ts))
        previous = ts
    return round(len(merged) / busy, 1) if busy > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (scripts/install-test-tools installs it)")
    tmp = Path(tempfile.mkdtemp(prefix="wswarm-bench-dist-"))
    home = tmp / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Bench\n\temail = bench@example.invalid\n")
    env = {**os.environ, "HOME": str(home), "GIT_CONFIG_GLOBAL": str(home / ".gitconfig"), "GIT_CONFIG_NOSYSTEM": "1",
           "WSWARM_CLUSTER_KEY": KEY}
    port = free_port()
    (tmp / "redis").mkdir()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp / "redis"),
                              "--appendonly", "yes", "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        repo = tmp / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        for i in range(args.files):
            (repo / "src" / f"d{i // 100}").mkdir(parents=True, exist_ok=True)
            (repo / "src" / f"d{i // 100}" / f"f{i}.txt").write_text(f"{i}\n")
        subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=env)
        subprocess.run(["git", "commit", "-qm", "base"], cwd=repo, check=True, env=env)
        bare = tmp / "remote.git"
        git(tmp, "clone", "-q", "--bare", str(repo), str(bare))
        git(repo, "remote", "add", "origin", f"file://{bare}")
        marks = tmp / "marks"
        marks.mkdir()
        sleeps = tmp / "sleeps"
        sleeps.mkdir()
        for i in range(args.tasks):
            task = f"t{i:04d}"
            (sleeps / task).write_text(f"{0.5 + (zlib.crc32(task.encode()) % 1500) / 1000:.3f}\n")
        # A shell agent: its first instruction comes ~2 ms after its start, where a Python one's
        # interpreter start (~80 ms here under load) would hide what dispatch itself costs.
        (tmp / "agent.sh").write_text(AGENT)
        agent = f"sh {tmp / 'agent.sh'} {marks} {sleeps}"
        plan = tmp / "plan.json"
        plan.write_text(json.dumps([{"id": f"t{i:04d}", "type": "feature", "description": f"task {i}",
                                     "files": [f"out/t{i:04d}.txt"]} for i in range(args.tasks)]))
        (repo / "wswarm.toml").write_text("[gate]\nchecks = []\n")
        redis_cmd(port, "PING")
        for w in range(args.workers):
            wdir = tmp / f"w{w}"
            (wdir / "home").mkdir(parents=True)
            shutil.copy(home / ".gitconfig", wdir / "home" / ".gitconfig")
            wenv = {**env, "HOME": str(wdir / "home"), "GIT_CONFIG_GLOBAL": str(wdir / "home" / ".gitconfig")}
            workers.append(subprocess.Popen([*WSWARM, "worker", "--redis", f"redis://127.0.0.1:{port}/0", "--repo",
                                             f"file://{bare}", "--agents", str(args.agents), "--name", f"w{w}",
                                             "--dir", str(wdir / "clone"), "--agent-cmd", agent],
                                            cwd=wdir, env=wenv, stdout=subprocess.DEVNULL,
                                            stderr=open(wdir / "stderr.log", "wb")))
        deadline = time.monotonic() + 120
        while redis_cmd(port, "--scan", "--pattern", "wswarm:worker:*").count("wswarm:worker:") < args.workers:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not register")
            time.sleep(0.1)
        concurrency = args.workers * args.agents
        before = commands(port)
        load_dist = [os.getloadavg()[0]]
        dist_s, dist_rss = run([*WSWARM, "start", "--plan", str(plan), "--redis", f"redis://127.0.0.1:{port}/0",
                                "--agent-cmd", agent, "--agents", str(concurrency)], repo, env)
        load_dist.append(os.getloadavg()[0])
        per_attempt = (commands(port) - before) / args.tasks
        evs = events(repo)
        lat = dispatch(evs, marks)
        merged = sum(1 for e in evs if e["kind"] == "merged")
        merge_rate = merges_per_second(evs)
        local = tmp / "local"
        git(tmp, "clone", "-q", f"file://{bare}", str(local))
        (local / "wswarm.toml").write_text("[gate]\nchecks = []\n")
        load_local = [os.getloadavg()[0]]
        local_s, _ = run([*WSWARM, "start", "--plan", str(plan), "--agent-cmd", agent, "--agents", str(concurrency)],
                         local, env)
        load_local.append(os.getloadavg()[0])
        local_lat = dispatch(events(local), marks)
        tree = {git(r, "rev-parse", git(r, "for-each-ref", "--format=%(refname)", "refs/heads/wswarm/*/integration")
                    + "^{tree}") for r in (repo, local)}
        if len(tree) != 1 or merged != args.tasks:
            raise SystemExit(f"trees differ or not all merged ({merged}/{args.tasks})")
        result = {"tasks": args.tasks, "workers": args.workers, "agents_each": args.agents, "files": args.files,
                  "distributed_s": round(dist_s, 2), "local_s": round(local_s, 2),
                  "makespan_ratio": round(dist_s / local_s, 3),
                  "dispatch_p50_ms": pct(lat, 0.5), "dispatch_p99_ms": pct(lat, 0.99),
                  "local_dispatch_p50_ms": pct(local_lat, 0.5), "local_dispatch_p99_ms": pct(local_lat, 0.99),
                  "merges_per_s_busy": merge_rate,
                  "redis_commands_per_attempt": round(per_attempt, 1), "integrator_peak_rss_mb": round(dist_rss, 1),
                  "load_dist_before_after": [round(x, 2) for x in load_dist],
                  "load_local_before_after": [round(x, 2) for x in load_local]}
        print(json.dumps(result) if args.json else "\n".join(f"{k:28} {v}" for k, v in result.items()))
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=60)
        redis.terminate()
        redis.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
