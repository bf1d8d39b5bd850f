"""wswarm's overhead over raw git, measured side by side in one run.

    python bench/overhead.py [--tasks N ...] [--files M] [--agents K ...] [--repeat R] [--json]

For every (N, K) and every repeat, two fresh and identical repositories of M small files are
generated; on one, `wswarm start` runs a plan of N independent tasks (task i appends a line to its
own file) with K agents; on the other, a minimal raw-git orchestrator does the same work with K
threads: worktree add, the same agent command, add + commit, then (serialized) merge-tree +
commit-tree + a compare-and-swap update-ref, and worktree remove. The wall times are printed side by
side as a ratio, with wswarm's peak RSS. Both integration trees must be equal and every task merged,
or the bench fails.

Standard library only; wswarm is run as a subprocess (the venv's `wswarm` by default). See README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The agent both sides run, through /bin/sh in the task's worktree. It reaches its task only through
# the environment (the command string never holds task text), as wswarm's command agents do.
AGENT_CMD = 'echo "changed by $WSWARM_TASK_ID" >> "src/$WSWARM_TASK_ID.txt"'
FILES_PER_DIR = 50
ZERO = "0" * 40
_GIT_LEAKS = ("GIT_DIR", "GIT_INDEX_FILE", "GIT_WORK_TREE", "GIT_PREFIX", "GIT_COMMON_DIR",
              "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE",
              "GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE")


class BenchError(Exception):
    """The bench could not measure, or a side produced a wrong result."""


# -- processes and git ---------------------------------------------------------------------------

def bench_env(home: Path) -> dict[str, str]:
    """No user or system git config (a user's commit.gpgsign or hooks would skew one side); an identity."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_LEAKS}
    gitconfig = home / ".gitconfig"
    gitconfig.write_text("[user]\n\tname = Bench\n\temail = bench@example.invalid\n"
                         "[init]\n\tdefaultBranch = main\n", encoding="utf-8")
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=str(gitconfig),
               GIT_TERMINAL_PROMPT="0")
    return env


def git(*args: str | Path, cwd: Path, env: dict[str, str], input: str | None = None) -> str:
    argv = ["git", *(str(a) for a in args)]
    res = subprocess.run(argv, cwd=cwd, env=env, input=input, capture_output=True, text=True,
                         stdin=None if input is not None else subprocess.DEVNULL)
    if res.returncode != 0:
        raise BenchError(f"{' '.join(argv)} (in {cwd}) exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout


# -- the generated repository --------------------------------------------------------------------

def file_path(j: int) -> str:
    """The j-th file: FILES_PER_DIR files per folder, as in a real tree (not 5,000 in one)."""
    return f"src/d{j // FILES_PER_DIR:03d}/f{j:05d}.txt"


def task_ids(n: int, m: int) -> list[str]:
    """Task i changes file i*M//N: tasks are spread over the tree. The id is the file's path in src/."""
    return [file_path(i * m // n).removeprefix("src/").removesuffix(".txt") for i in range(n)]


def make_repo(path: Path, *, files: int, date: int, env: dict[str, str]) -> str:
    """M small files in one commit, packed as a real repository is; returns the commit id.

    The date is fixed so both sides' repositories are identical; later commits use the real clock,
    so dates increase (older-than-parent dates make merge-base slow: shared/FACTS.md).
    """
    path.mkdir(parents=True)
    git("init", "-q", cwd=path, env=env)
    made: set[Path] = set()
    for j in range(files):
        p = path / file_path(j)
        if p.parent not in made:
            p.parent.mkdir(parents=True, exist_ok=True)
            made.add(p.parent)
        p.write_text(f"file {j}\n" + "".join(f"line {k} of file {j}\n" for k in range(1, 6)), encoding="utf-8")
    dated = dict(env, GIT_AUTHOR_DATE=f"{date} +0000", GIT_COMMITTER_DATE=f"{date} +0000")
    git("add", "-A", cwd=path, env=dated)
    git("commit", "-q", "-m", f"{files} files", cwd=path, env=dated)
    # 5,000 loose blobs would make a task's `git commit` start `gc --auto` at random.
    git("repack", "-adq", cwd=path, env=env)
    return git("rev-parse", "HEAD", cwd=path, env=env).strip()


def write_plan(path: Path, ids: list[str]) -> None:
    plan = [{"id": tid, "description": f"append a line to src/{tid}.txt", "files": [f"src/{tid}.txt"]}
            for tid in ids]
    path.write_text(json.dumps(plan, indent=1), encoding="utf-8")


def tree_of(repo: Path, ref: str, env: dict[str, str]) -> str:
    return git("rev-parse", f"{ref}^{{tree}}", cwd=repo, env=env).strip()


def check_result(repo: Path, *, base: str, ref: str, ids: list[str], env: dict[str, str], side: str) -> str:
    """The tree of REF, after checking it changes exactly the N task files and has N merges."""
    changed = set(git("diff", "--name-only", base, ref, cwd=repo, env=env).split())
    expected = {f"src/{tid}.txt" for tid in ids}
    if changed != expected:
        raise BenchError(f"{side}: {ref} changes {len(changed)} files, expected the {len(expected)} task files "
                         f"(missing {sorted(expected - changed)[:3]}, extra {sorted(changed - expected)[:3]})")
    merges = int(git("rev-list", "--count", "--merges", f"{base}..{ref}", cwd=repo, env=env))
    if merges != len(ids):
        raise BenchError(f"{side}: {ref} has {merges} merge commits, expected {len(ids)}")
    return tree_of(repo, ref, env)


# -- the raw-git baseline ------------------------------------------------------------------------

def run_raw(repo: Path, ids: list[str], *, agents: int, base: str, env: dict[str, str]) -> str:
    """The least any orchestrator must do per task, K tasks at a time, merges one at a time.

    Returns the integration branch.
    """
    integration = "bench/integration"
    git("update-ref", f"refs/heads/{integration}", base, ZERO, cwd=repo, env=env)
    head = [base]                      # the integration tip, read and moved under merge_lock
    merge_lock = threading.Lock()
    todo: queue.Queue[tuple[int, str]] = queue.Queue()
    for item in enumerate(ids):
        todo.put(item)
    errors: list[BaseException] = []
    wt_root = repo / ".git" / "bench-worktrees"
    wt_root.mkdir()

    def one(i: int, tid: str) -> None:
        branch = f"bench/tasks/{tid}"
        wt = wt_root / f"raw-{i:05d}"  # unique basenames: parallel worktree add can fail otherwise
        with merge_lock:
            start = head[0]
        git("worktree", "add", "--quiet", "-b", branch, wt, start, cwd=repo, env=env)
        task_env = dict(env, WSWARM_TASK_ID=tid, WSWARM_ATTEMPT="1", WSWARM_WORKTREE=str(wt))
        subprocess.run(["/bin/sh", "-c", AGENT_CMD], cwd=wt, env=task_env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, check=True)
        git("add", "-A", cwd=wt, env=env)
        git("-c", "commit.gpgsign=false", "commit", "--no-verify", "-q", "-m", f"{tid}: append a line",
            cwd=wt, env=env)
        # A just-created branch is a loose ref: read the file, as a library read would, not a process.
        tip = (repo / ".git" / "refs" / "heads" / branch).read_text(encoding="utf-8").strip()
        with merge_lock:
            ours = head[0]
            tree = git("merge-tree", "--write-tree", ours, tip, cwd=repo, env=env).splitlines()[0]
            commit = git("commit-tree", tree, "-p", ours, "-p", tip, "-F", "-", cwd=repo, env=env,
                         input=f"merge {tid}\n").strip()
            git("update-ref", f"refs/heads/{integration}", commit, ours, cwd=repo, env=env)
            head[0] = commit
        git("worktree", "remove", "--force", wt, cwd=repo, env=env)

    def worker() -> None:
        while not errors:
            try:
                i, tid = todo.get_nowait()
            except queue.Empty:
                return
            try:
                one(i, tid)
            except BaseException as exc:  # noqa: BLE001 — re-raised by the caller below
                errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"raw-{k}") for k in range(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise BenchError(f"raw git baseline failed: {errors[0]}") from errors[0]
    return integration


# -- wswarm --------------------------------------------------------------------------------------

@dataclass
class WswarmRun:
    seconds: float
    startup: float | None   # process start -> run-started event (imports, checks, state creation)
    drive: float | None     # run-started -> run-finished
    exit: float | None      # run-finished -> process exit
    peak_rss_mb: float | None
    integration: str


def _watch_hwm(pid: int, out: list[int], stop: threading.Event) -> None:
    """Poll the wswarm process's own VmHWM (peak RSS, kB); it only grows, so the last read is the peak
    up to ~50 ms before exit."""
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]))
                    break
        except (OSError, ValueError):
            return
        stop.wait(0.05)


def run_wswarm(wswarm: list[str], repo: Path, plan: Path, *, agents: int, env: dict[str, str],
               log: Path) -> WswarmRun:
    argv = [*wswarm, "start", "--plan", str(plan), "--agents", str(agents), "--max-attempts", "1",
            "--agent-cmd", AGENT_CMD]
    hwm: list[int] = []
    stop = threading.Event()
    with open(log, "wb") as out:
        wall0 = time.time()
        t0 = time.perf_counter()
        child = subprocess.Popen(argv, cwd=repo, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=_watch_hwm, args=(child.pid, hwm, stop), daemon=True)
        watcher.start()
        # wait4 reports this child's own rusage, not the max over every child this bench has reaped.
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        child.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        watcher.join()
    if child.returncode != 0:
        raise BenchError(f"wswarm exited {child.returncode}; its output is in {log}:\n"
                         + log.read_text(encoding="utf-8", errors="replace")[-3000:])
    status_json = subprocess.run([*wswarm, "status", "--json"], cwd=repo, env=env, capture_output=True,
                                 text=True, check=True).stdout
    data = json.loads(status_json)
    not_merged = [t["id"] for t in data["tasks"] if t["status"] != "merged"]
    if data["state"] != "finished" or not_merged:
        raise BenchError(f"wswarm status: run {data['state']}, not merged: {not_merged[:5]}")
    events = [json.loads(line) for line in
              (repo / ".git" / "wswarm" / "runs" / data["run"] / "events.jsonl").read_text().splitlines()]
    ts = {e["kind"]: e["ts"] for e in events if e["kind"] in ("run-started", "run-finished")}
    started, finished = ts.get("run-started"), ts.get("run-finished")
    # ru_maxrss is the max of the process and the children it waited for (git, sh: all far smaller).
    peak_kb = max(hwm) if hwm else usage.ru_maxrss
    return WswarmRun(
        seconds=seconds,
        startup=started - wall0 if started else None,
        drive=finished - started if started and finished else None,
        exit=wall0 + seconds - finished if finished else None,
        peak_rss_mb=peak_kb / 1024,
        integration=data["integration_branch"],
    )


def find_wswarm(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    for candidate in (Path(sys.executable).parent / "wswarm",
                      Path(__file__).resolve().parent.parent / ".venv" / "bin" / "wswarm"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return [str(candidate)]
    found = shutil.which("wswarm")
    if found:
        return [found]
    raise BenchError("wswarm not found: run with the venv's python, or pass --wswarm PATH")


# -- one measurement and the summary -------------------------------------------------------------

@dataclass
class Pair:
    raw: float
    wswarm: float
    startup: float | None
    drive: float | None
    exit: float | None
    peak_rss_mb: float | None
    order: str

    @property
    def ratio(self) -> float:
        return self.wswarm / self.raw


@dataclass
class Case:
    tasks: int
    files: int
    agents: int
    pairs: list[Pair] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        def stats(values: list[float]) -> dict[str, float]:
            return {"median": statistics.median(values), "min": min(values), "max": max(values)}

        overhead = [(p.wswarm - p.raw) / self.tasks * 1000 for p in self.pairs]
        rss = [p.peak_rss_mb for p in self.pairs if p.peak_rss_mb is not None]
        startup = [p.startup for p in self.pairs if p.startup is not None]
        return {"tasks": self.tasks, "files": self.files, "agents": self.agents, "repeats": len(self.pairs),
                "raw_s": stats([p.raw for p in self.pairs]), "wswarm_s": stats([p.wswarm for p in self.pairs]),
                "ratio": stats([p.ratio for p in self.pairs]), "overhead_ms_per_task": stats(overhead),
                "wswarm_startup_s": stats(startup) if startup else None,
                "wswarm_peak_rss_mb": stats(rss) if rss else None,
                "runs": [dict(asdict(p), ratio=p.ratio) for p in self.pairs]}


def measure(case: Case, *, repeat: int, root: Path, wswarm: list[str], env: dict[str, str], date: int,
            keep: bool, progress: bool) -> None:
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
        raw_s = ws = None
        for side in order.split(","):
            os.sync()
            if side == "raw":
                t0 = time.perf_counter()
                raw_branch = run_raw(raw_repo, ids, agents=case.agents, base=base, env=env)
                raw_s = time.perf_counter() - t0
            else:
                ws = run_wswarm(wswarm, ws_repo, plan, agents=case.agents, env=env, log=here / "wswarm.log")
        assert raw_s is not None and ws is not None
        raw_tree = check_result(raw_repo, base=base, ref=raw_branch, ids=ids, env=env, side="raw git")
        ws_tree = check_result(ws_repo, base=base, ref=ws.integration, ids=ids, env=env, side="wswarm")
        if raw_tree != ws_tree:
            raise BenchError(f"integration trees differ: raw git {raw_tree}, wswarm {ws_tree}")
        pair = Pair(raw_s, ws.seconds, ws.startup, ws.drive, ws.exit, ws.peak_rss_mb, order)
        case.pairs.append(pair)
        if progress:
            print(f"  N={case.tasks} M={case.files} K={case.agents} #{r + 1}: raw {raw_s:.2f}s, "
                  f"wswarm {ws.seconds:.2f}s, ratio {pair.ratio:.3f} ({order})", file=sys.stderr, flush=True)
        if not keep:
            shutil.rmtree(here)


def machine() -> dict[str, object]:
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": os.cpu_count(), "git": git_version,
            "python": platform.python_version(), "platform": platform.platform()}


def render(cases: list[Case], info: dict[str, object]) -> str:
    def fmt(s: dict[str, float], spec: str) -> str:
        return f"{s['median']:{spec}} ({s['min']:{spec}}–{s['max']:{spec}})"

    lines = [f"wswarm overhead vs raw git — {info['date']}, {info['cores']} cores, {info['git']}, "
             f"Python {info['python']}",
             "median (min–max) over the repeats; ratio = wswarm / raw git; ms/task = (wswarm − raw) / N",
             "",
             f"{'N':>5} {'M':>6} {'K':>3} {'R':>2}  {'raw git s':<22} {'wswarm s':<22} {'ratio':<22} "
             f"{'ms/task':<20} {'startup s':<10} {'RSS MB':>6}"]
    for case in cases:
        s = case.summary()
        startup = s["wswarm_startup_s"]
        rss = s["wswarm_peak_rss_mb"]
        lines.append(
            f"{case.tasks:>5} {case.files:>6} {case.agents:>3} {len(case.pairs):>2}  "
            f"{fmt(s['raw_s'], '.2f'):<22} {fmt(s['wswarm_s'], '.2f'):<22} {fmt(s['ratio'], '.3f'):<22} "
            f"{fmt(s['overhead_ms_per_task'], '.0f'):<20} "
            f"{(format(startup['median'], '.2f') if isinstance(startup, dict) else '?'):<10} "
            f"{(format(rss['median'], '.0f') if isinstance(rss, dict) else '?'):>6}")
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
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--wswarm", help="the wswarm executable (default: the venv's)")
    parser.add_argument("--keep", action="store_true", help="keep the generated repositories")
    parser.add_argument("--tmp", type=Path, help="where to generate them (default: the system temp dir)")
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
        cases = [Case(n, args.files, k) for n in args.tasks for k in args.agents]
        try:
            for case in cases:
                measure(case, repeat=args.repeat, root=root, wswarm=wswarm, env=env, date=date,
                        keep=args.keep, progress=not args.json)
        finally:
            if args.keep:
                print(f"repositories kept in {root}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    info = machine()
    if args.json:
        print(json.dumps({"machine": info, "agent_cmd": AGENT_CMD, "cases": [c.summary() for c in cases]},
                         indent=2))
    else:
        print(render(cases, info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
