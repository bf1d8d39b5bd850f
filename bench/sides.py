"""The two sides of the bench: a generated repository, the raw-git baseline, and a wswarm run."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from machine import machine_busy

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
    # wswarm as installed: with its bytecode cached (pip compiles it on install), which a checkout's
    # editable install never has where PYTHONDONTWRITEBYTECODE is set. `warm_up` fills the cache.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
    return env


def warm_up(wswarm: list[str], root: Path, *, env: dict[str, str]) -> None:
    """One small run before any measured one, so neither pays for compiling wswarm's bytecode."""
    repo = root / "warm-up"
    make_repo(repo, files=4, date=int(time.time()) - 3600, env=env)
    write_plan(root / "warm-up.json", task_ids(1, 4))
    res = subprocess.run([*wswarm, "start", "--plan", str(root / "warm-up.json"), "--agent-cmd", AGENT_CMD],
                         cwd=repo, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"the warm-up run failed: {(res.stdout + res.stderr)[-2000:]}")
    shutil.rmtree(repo, ignore_errors=True)


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
    so dates increase (older-than-parent dates make merge-base slow).
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
        # Dated like a checkout made before the index: files written in the second the index is
        # written are "racily clean", so every `git status` that may not rewrite the index (wswarm's
        # watch on the user's checkout) would re-read all of them, which no real checkout makes it do.
        os.utime(p, (date, date))
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

BASELINES = ("fresh", "slot")


def run_raw(repo: Path, ids: list[str], *, agents: int, base: str, env: dict[str, str],
            trace: Path | None = None, baseline: str = "fresh") -> str:
    """The least any orchestrator must do per task, K tasks at a time, merges one at a time.

    BASELINE "fresh": a new worktree per task (`worktree add -b`, `worktree remove`). "slot": the
    physical limit of a loop that keeps one worktree per thread, made once (timed too) and switched
    per task with `checkout --force -B` + `clean -ffd`, as wswarm's slots are. Returns the
    integration branch.
    """
    if trace is not None:
        env = dict(env, GIT_TRACE2_EVENT=str(trace))
    integration = "bench/integration"
    git("update-ref", f"refs/heads/{integration}", base, ZERO, cwd=repo, env=env)
    head = [base]                      # the integration tip, read and moved under merge_lock
    merge_lock = threading.Lock()
    # Concurrent `worktree add` and `remove` race on .git/worktrees (an add fails when a remove deletes
    # the emptied folder under it: seen here at N=200); any orchestrator must serialize them, as wswarm does.
    admin_lock = threading.Lock()
    todo: queue.Queue[tuple[int, str]] = queue.Queue()
    for item in enumerate(ids):
        todo.put(item)
    errors: list[BaseException] = []
    wt_root = repo / ".git" / "bench-worktrees"
    wt_root.mkdir()

    local = threading.local()

    def one(i: int, tid: str) -> None:
        branch = f"bench/tasks/{tid}"
        with merge_lock:
            start = head[0]
        if baseline == "slot":
            wt = local.slot
            git("checkout", "--force", "--quiet", "-B", branch, start, cwd=wt, env=env)
            git("clean", "-ffdq", cwd=wt, env=env)
        else:
            wt = wt_root / f"raw-{i:05d}"  # unique basenames: parallel worktree add can fail otherwise
            with admin_lock:
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
        if baseline == "fresh":
            with admin_lock:
                git("worktree", "remove", "--force", wt, cwd=repo, env=env)

    def worker(k: int) -> None:
        if baseline == "slot":
            local.slot = wt_root / f"slot-{k}"
            try:   # distinct basenames, and no removal yet: parallel adds are safe
                git("worktree", "add", "--quiet", "--detach", local.slot, base, cwd=repo, env=env)
            except BaseException as exc:  # noqa: BLE001 — re-raised by the caller below
                errors.append(exc)
        while not errors:
            try:
                i, tid = todo.get_nowait()
            except queue.Empty:
                return
            try:
                one(i, tid)
            except BaseException as exc:  # noqa: BLE001 — re-raised by the caller below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,), name=f"raw-{k}") for k in range(agents)]
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
    cpu: float              # user + system seconds of wswarm and every process it waited for
    other_cores: float      # cores kept busy by other processes meanwhile
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
               log: Path, trace: Path | None = None) -> WswarmRun:
    argv = [*wswarm, "start", "--plan", str(plan), "--agents", str(agents), "--max-attempts", "1",
            "--agent-cmd", AGENT_CMD]
    hwm: list[int] = []
    stop = threading.Event()
    with open(log, "wb") as out:
        busy0 = machine_busy()
        wall0 = time.time()
        t0 = time.perf_counter()
        run_env = env if trace is None else dict(env, GIT_TRACE2_EVENT=str(trace))
        child = subprocess.Popen(argv, cwd=repo, env=run_env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT)
        watcher = threading.Thread(target=_watch_hwm, args=(child.pid, hwm, stop), daemon=True)
        watcher.start()
        # wait4 reports this child's own rusage, not the max over every child this bench has reaped.
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - t0
        busy = machine_busy() - busy0
        child.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        watcher.join()
    if child.returncode != 0:
        raise BenchError(f"wswarm exited {child.returncode}; its output is in {log}:\n"
                         + log.read_text(encoding="utf-8", errors="replace")[-3000:])
    res = subprocess.run([*wswarm, "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise BenchError(f"wswarm status --json exited {res.returncode}: {(res.stdout + res.stderr).strip()[-2000:]}")
    data = json.loads(res.stdout)
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
        cpu=usage.ru_utime + usage.ru_stime,
        other_cores=max(0.0, busy - usage.ru_utime - usage.ru_stime) / seconds,
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
