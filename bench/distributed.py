"""Distributed runs against local ones, on this machine: one run of each, same plan, same concurrency.

    python bench/distributed.py [--tasks N] [--workers W] [--agents K] [--files M] [--sleep MIN MAX]
                                [--no-local] [--git-trace] [--pin] [--json]

The issue's shape: --tasks 1000 --workers 4 --agents 8 --files 5000 (the defaults are smaller).

Starts its own redis-server (free port, temporary folder, append-only), a bare remote over file://,
W `wswarm worker` processes of K agents each (own clone and HOME), then runs a plan of N independent
tasks whose agents sleep MIN-MAX s (0.5-2; deterministic per task) and write one file: once with
`start --redis` and W*K attempts on workers (none on the integrator), once locally with --agents W*K
in a second clone (--no-local: not at all, for a quicker look at the distributed side). Prints the
makespan of each and their ratio, dispatch latency p50/p99 of both (from the integrator's
attempt-started to the agent's first instruction, same clock; the agent is a shell script), the
integrator's merges per second of busy time, Redis commands per attempt (INFO commandstats), the
integrator's peak RSS, the 1-minute load average before and after each run, and what the workers'
object stores grew by per attempt (what their fetches brought, plus their own commits). With
--git-trace, every git process of the distributed side is recorded (GIT_TRACE2_EVENT) and its
pushes and fetches are counted and timed, the integrator's apart from the workers'. With --pin
(Linux), the distributed run's integrator (and its git processes) has core 0 to itself and Redis, the
workers and their agents share the others: its merges per second of busy time are then what one
integrator does with a core of its own. Both integration trees must be equal and every task merged.
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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
WSWARM = [PY, "-m", "worktree_swarm"]
KEY = "bench-cluster-key-0123456789abcdef"
# The two sides are compared at the same concurrency: admission's load limit (which past 4 per CPU
# holds new agents back, differently on each side) is lifted on the integrator, the workers and the
# local run alike. 32 agents on 2 CPUs are past any load a limit would allow.
UNLIMITED = "[limits]\nmax_load = 1000\n"

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


def run(argv: list[str], cwd: Path, env: dict[str, str], *,
        cores: set[int] | None = None) -> tuple[float, float, float]:
    """Wall seconds, the peak RSS (MB) of the children waited for so far, and the CPU seconds (user and
    system) ARGV took with every process it waited for (its git processes); on CORES alone if given."""
    t = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Its output to a file, not a pipe: a line per event, and a pipe this process read late (its core
    # busy with agents) would hold the run up at every write once full.
    with tempfile.TemporaryFile() as out:
        res = subprocess.run(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=on(cores))
        if res.returncode != 0:
            out.seek(0)
            text = out.read().decode(errors="replace")
            raise SystemExit(f"{' '.join(argv[2:5])} failed ({res.returncode}):\n{text[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return time.monotonic() - t, after.ru_maxrss / 1024, cpu


def on(cores: set[int] | None) -> Callable[[], None] | None:
    """What a child runs before its program to be held to CORES (and its own children with it)."""
    return None if cores is None else (lambda: os.sched_setaffinity(0, cores))


def worker_cpu(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds a long-lived process (a worker, Redis) and the children it waited for took so far."""
    import psutil

    t = psutil.Process(proc.pid).cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def events(repo: Path) -> list[dict[str, object]]:
    [run_dir] = list((repo / ".git" / "wswarm" / "runs").iterdir())
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def dispatch(evs: list[dict[str, object]], marks: Path) -> list[float]:
    """Seconds from each attempt-started (the integrator's clock) to its agent's first instruction."""
    started = {(e["task"], e["attempt"]): float(e["ts"]) for e in evs if e["kind"] == "attempt-started"}  # type: ignore[arg-type]
    return sorted(float((marks / f"{t}-{n}").read_text()) - ts for (t, n), ts in started.items())


def pct(values: list[float], q: float) -> float:
    return round(1000 * values[min(len(values) - 1, int(len(values) * q))], 1)


def outcome_times(redis_dir: Path) -> dict[str, float]:
    """When each task's last outcome reached Redis (its entry id is Redis's clock, in ms), read back
    from the append-only file, which keeps every XADD with the id it was given."""
    out: dict[str, float] = {}
    for aof in sorted(redis_dir.rglob("*.aof")):
        data, at = aof.read_bytes(), 0
        while data.startswith(b"*", at):
            end = data.index(b"\r\n", at)
            count, at, words = int(data[at + 1:end]), end + 2, []
            for _ in range(count):
                end = data.index(b"\r\n", at)
                size = int(data[at + 1:end])
                words.append(data[end + 2:end + 2 + size])
                at = end + 2 + size + 2
            if len(words) > 3 and words[0].lower() == b"xadd" and words[1].endswith(b":outcomes"):
                fields = dict(zip(words[3::2], words[4::2]))
                body = json.loads(fields.get(b"msg", b"{}")).get("body", {})
                out[str(body.get("task"))] = int(words[2].split(b"-")[0]) / 1000
    return out


def merges_per_second(evs: list[dict[str, object]], arrived: dict[str, float]) -> tuple[float, float]:
    """Merges per second of the integrator's busy time, and the median ms from an outcome reaching
    Redis to its merge. Each merge is charged the time from when its outcome reached Redis (or the
    previous merge, whichever is later) to its `merged` event: the fetch of its branch, the in-memory
    merge and whatever the loop did in between (launches); waiting for workers is left out."""
    merged = sorted((float(e["ts"]), str(e["task"])) for e in evs if e["kind"] == "merged")  # type: ignore[arg-type]
    if sum(task in arrived for _, task in merged) < len(merged):
        raise SystemExit(f"outcome times read back for {sum(t in arrived for _, t in merged)} of {len(merged)} "
                         "merges: the append-only file was rewritten?")
    busy, previous, lags = 0.0, 0.0, []
    for ts, task in merged:
        busy += ts - max(previous, arrived.get(task, ts))
        lags.append(ts - arrived.get(task, ts))
        previous = ts
    rate = round(len(merged) / busy, 1) if busy > 0 else 0.0
    return rate, pct(sorted(lags), 0.5) if lags else 0.0


def steps(evs: list[dict[str, object]], marks: Path) -> dict[str, float]:
    """Where dispatch goes, p50 ms per step, as the integrator's event log and the agents' marks see
    it: attempt-started -> attempt-assigned (start commit pushed, request read, by a worker) ->
    agent-started (start fetched, slot switched) -> the agent's first instruction. A worker's event is
    stamped when the integrator reads it: a few ms late."""
    at: dict[tuple[object, object], dict[str, float]] = {}
    for e in evs:
        if e["kind"] in ("attempt-started", "attempt-assigned", "agent-started"):
            at.setdefault((e["task"], e["attempt"]), {})[str(e["kind"])] = float(e["ts"])  # type: ignore[arg-type]
    spans: dict[str, list[float]] = {"push+request": [], "fetch+slot": [], "agent": []}
    for (task, n), t in at.items():
        if len(t) == 3:
            spans["push+request"].append(t["attempt-assigned"] - t["attempt-started"])
            spans["fetch+slot"].append(t["agent-started"] - t["attempt-assigned"])
            spans["agent"].append(float((marks / f"{task}-{n}").read_text()) - t["agent-started"])
    return {k: pct(sorted(v), 0.5) for k, v in spans.items() if v}


def object_bytes(repo: Path) -> int:
    """Bytes of REPO's object store (loose and packed), as git counts them."""
    fields = dict(line.split(": ", 1) for line in git(repo, "count-objects", "-v").splitlines())
    return 1024 * (int(fields["size"]) + int(fields["size-pack"]))


def traced(folder: Path) -> dict[str, dict[str, float]]:
    """The pushes and fetches GIT_TRACE2_EVENT recorded in FOLDER (a file per git process), per side
    (the integrator's repository or a worker's clone) and command: how many, median and total ms."""
    times: dict[str, list[float]] = {}
    for path in folder.iterdir():
        name, cwd, seconds = None, "", None
        for line in path.read_text(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("event") == "cmd_name" and e.get("hierarchy", "").count("/") == 0:
                name = e.get("name")
            elif e.get("event") == "def_repo" and not cwd:
                cwd = str(e.get("worktree") or "")
            elif e.get("event") == "exit":
                seconds = float(e.get("t_abs", 0))
        if name in ("push", "fetch") and seconds is not None:
            side = "worker" if cwd.endswith("/clone") else "integrator"
            times.setdefault(f"{side} {name}", []).append(seconds * 1000)
    return {k: {"count": len(v), "p50_ms": round(sorted(v)[len(v) // 2], 1), "total_s": round(sum(v) / 1000, 2)}
            for k, v in sorted(times.items())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--agents", type=int, default=4, help="agents per worker")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--sleep", type=float, nargs=2, default=(0.5, 2.0), metavar=("MIN", "MAX"),
                    help="seconds each agent sleeps, spread over [MIN, MAX) by task (default 0.5 2)")
    ap.add_argument("--no-local", action="store_true", help="skip the local run (no makespan ratio)")
    ap.add_argument("--git-trace", action="store_true", help="count and time the distributed side's pushes and fetches")
    ap.add_argument("--pin", action="store_true",
                    help="the integrator on core 0 alone, everything else on the other cores (Linux)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (repositories, logs, Redis)")
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
    # wswarm as installed, its bytecode cached (pip compiles on install), which an editable install
    # never has where PYTHONDONTWRITEBYTECODE is set: every process would compile it at its start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "worktree_swarm")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    others = set(range(1, os.cpu_count() or 1)) if args.pin else None
    if others is not None and not others:
        raise SystemExit("--pin needs two cores or more")
    port = free_port()
    (tmp / "redis").mkdir()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp / "redis"),
                              "--appendonly", "yes", "--save", "",
                              # every XADD stays in the append-only file, read back for outcome times
                              "--auto-aof-rewrite-percentage", "0", "--aof-use-rdb-preamble", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=on(others))
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
            spread = (zlib.crc32(task.encode()) % 1000) / 1000
            (sleeps / task).write_text(f"{args.sleep[0] + spread * (args.sleep[1] - args.sleep[0]):.3f}\n")
        # A shell agent: its first instruction comes ~2 ms after its start, where a Python one's
        # interpreter start (~80 ms here under load) would hide what dispatch itself costs.
        (tmp / "agent.sh").write_text(AGENT)
        agent = f"sh {tmp / 'agent.sh'} {marks} {sleeps}"
        plan = tmp / "plan.json"
        plan.write_text(json.dumps([{"id": f"t{i:04d}", "type": "feature", "description": f"task {i}",
                                     "files": [f"out/t{i:04d}.txt"]} for i in range(args.tasks)]))
        concurrency = args.workers * args.agents
        # Every attempt on a worker (no --agents: none on the integrator), at most W*K at once.
        (repo / "wswarm.toml").write_text(f"[gate]\nchecks = []\n{UNLIMITED}\n[distributed]\nremote_agents = {concurrency}\n")
        redis_cmd(port, "PING")
        trace = tmp / "trace"
        if args.git_trace:
            trace.mkdir()
            env["GIT_TRACE2_EVENT"] = str(trace)
        for w in range(args.workers):
            wdir = tmp / f"w{w}"
            (wdir / "home").mkdir(parents=True)
            shutil.copy(home / ".gitconfig", wdir / "home" / ".gitconfig")
            wenv = {**env, "HOME": str(wdir / "home"), "GIT_CONFIG_GLOBAL": str(wdir / "home" / ".gitconfig")}
            # The worker's clone made here, to carry the worker's own configuration (as a user's would).
            git(wdir, "clone", "-q", "--no-tags", f"file://{bare}", str(wdir / "clone"))
            (wdir / "clone" / "wswarm.toml").write_text(UNLIMITED)
            workers.append(subprocess.Popen([*WSWARM, "worker", "--redis", f"redis://127.0.0.1:{port}/0", "--repo",
                                             f"file://{bare}", "--agents", str(args.agents), "--name", f"w{w}",
                                             "--dir", str(wdir / "clone"), "--agent-cmd", agent],
                                            cwd=wdir, env=wenv, stdout=subprocess.DEVNULL,
                                            stderr=open(wdir / "stderr.log", "wb"), preexec_fn=on(others)))
        deadline = time.monotonic() + 120
        while redis_cmd(port, "--scan", "--pattern", "wswarm:worker:*").count("wswarm:worker:") < args.workers:
            if time.monotonic() > deadline:
                raise SystemExit("workers did not register")
            time.sleep(0.1)
        clones = [tmp / f"w{w}" / "clone" for w in range(args.workers)]
        grown = sum(object_bytes(c) for c in clones)
        before = commands(port)
        load_dist = [os.getloadavg()[0]]
        workers_cpu = sum(worker_cpu(w) for w in workers)
        redis_cpu = worker_cpu(redis)
        dist_s, dist_rss, dist_cpu = run([*WSWARM, "start", "--plan", str(plan), "--redis", f"redis://127.0.0.1:{port}/0",
                                "--agent-cmd", agent], repo, env, cores={0} if args.pin else None)
        load_dist.append(os.getloadavg()[0])
        workers_cpu = sum(worker_cpu(w) for w in workers) - workers_cpu
        redis_cpu = worker_cpu(redis) - redis_cpu
        env.pop("GIT_TRACE2_EVENT", None)
        grown = sum(object_bytes(c) for c in clones) - grown
        per_attempt = (commands(port) - before) / args.tasks
        evs = events(repo)
        lat = dispatch(evs, marks)
        merged = sum(1 for e in evs if e["kind"] == "merged")
        merge_rate, merge_lag = merges_per_second(evs, outcome_times(tmp / "redis"))
        dist_steps = steps(evs, marks)      # before the local run writes its own marks
        local_s, local_lat, load_local, local_cpu = 0.0, [0.0], [0.0, 0.0], 0.0
        rows: tuple[Path, ...] = (repo,)
        if not args.no_local:
            local = tmp / "local"
            git(tmp, "clone", "-q", f"file://{bare}", str(local))
            (local / "wswarm.toml").write_text(f"[gate]\nchecks = []\n{UNLIMITED}")
            load_local = [os.getloadavg()[0]]
            local_s, _, local_cpu = run([*WSWARM, "start", "--plan", str(plan), "--agent-cmd", agent, "--agents", str(concurrency)],
                             local, env)
            load_local.append(os.getloadavg()[0])
            local_lat = dispatch(events(local), marks)
            rows = (repo, local)
        tree = {git(r, "rev-parse", git(r, "for-each-ref", "--format=%(refname)", "refs/heads/wswarm/*/integration")
                    + "^{tree}") for r in rows}
        if len(tree) != 1 or merged != args.tasks:
            raise SystemExit(f"trees differ or not all merged ({merged}/{args.tasks})")
        result: dict[str, object] = {
            "tasks": args.tasks, "workers": args.workers, "agents_each": args.agents, "files": args.files,
            "distributed_s": round(dist_s, 2), "local_s": round(local_s, 2),
            "makespan_ratio": round(dist_s / local_s, 3) if local_s else None,
            "dispatch_p50_ms": pct(lat, 0.5), "dispatch_p99_ms": pct(lat, 0.99),
            "local_dispatch_p50_ms": pct(local_lat, 0.5), "local_dispatch_p99_ms": pct(local_lat, 0.99),
            "dispatch_steps_p50_ms": dist_steps,
            "merges_per_s_busy": merge_rate, "outcome_to_merged_p50_ms": merge_lag,
            # What one integrator could sustain on a core of its own: its CPU (and its git's) per merge.
            "integrator_cpu_ms_per_merge": round(1000 * dist_cpu / max(merged, 1), 1),
            # Every process of each side, per task (the agents' own shells and sleeps included on both)
            "cpu_ms_per_task_dist_local": [round(1000 * (dist_cpu + workers_cpu + redis_cpu) / args.tasks, 1),
                                           round(1000 * local_cpu / args.tasks, 1)],
            "cpu_ms_per_task_integrator_workers_redis": [round(1000 * c / args.tasks, 1)
                                                         for c in (dist_cpu, workers_cpu, redis_cpu)],
            "merges_per_integrator_cpu_s": round(merged / dist_cpu, 1) if dist_cpu else None,
            "redis_commands_per_attempt": round(per_attempt, 1), "integrator_peak_rss_mb": round(dist_rss, 1),
            "worker_objects_kb_per_attempt": round(grown / 1024 / args.tasks, 1),
            "load_dist_before_after": [round(x, 2) for x in load_dist],
            "load_local_before_after": [round(x, 2) for x in load_local]}
        if args.git_trace:
            result["git_transport"] = traced(trace)
        print(json.dumps(result) if args.json else "\n".join(f"{k:28} {v}" for k, v in result.items()))
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            proc.wait(timeout=60)
        redis.terminate()
        redis.wait(timeout=10)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
