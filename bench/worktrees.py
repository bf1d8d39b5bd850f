"""Per-task worktree cost: slots against a fresh `git worktree add` per task, measured side by side.

    .venv/bin/python bench/worktrees.py [--files M] [--tasks N] [--repeat R] [--tmp DIR] [--json]

On a generated repository of M files (default 50,000, made with `git fast-import` in seconds), N
tasks run one after another, each starting from the previous one's commit as a task starts from the
integration head. Per task, only the worktree's own cost is timed:

- fresh: `git worktree add -b BRANCH PATH HEAD` (a unique basename each time), and after the task
  `git worktree remove --force` — what wswarm did per attempt before slots;
- slots: wswarm's SlotPool (this checkout's code) `acquire` (switch to a new branch at the start
  commit) and `release` (scrub, detach, clean) of one slot made once beforehand.

Between the two, each task does the same work: append a line to one file and commit it. Printed:
per-task milliseconds (median, min–max over the tasks), the ratio of the means, the one-time cost
of making the slot, and disk used (one checkout's blocks). The sides alternate which goes first.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from machine import default_tmp, filesystem, machine  # noqa: E402
from sides import BenchError, bench_env, git  # noqa: E402

from worktree_swarm.swarm.admission import folder_bytes  # noqa: E402
from worktree_swarm.git.repo import Repo  # noqa: E402
from worktree_swarm.git.slots import SlotPool  # noqa: E402
from worktree_swarm.util.types import BranchName, Sha  # noqa: E402

FILES_PER_DIR = 50


def generate(path: Path, files: int, env: dict[str, str]) -> str:
    """M files of 6 lines, 50 to a folder, in one commit, written by fast-import (no checkout needed)."""
    path.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=path, env=env)
    date = int(time.time()) - 3600
    chunks = []
    for j in range(files):
        data = (f"file {j}\n" + "".join(f"line {k} of file {j}\n" for k in range(1, 6))).encode()
        chunks.append(b"blob\nmark :%d\ndata %d\n%s\n" % (j + 1, len(data), data))
    chunks.append(b"commit refs/heads/main\ncommitter Bench <bench@example.invalid> %d +0000\ndata 5\nfiles\n" % date)
    for j in range(files):
        chunks.append(b"M 100644 :%d src/d%03d/f%05d.txt\n" % (j + 1, j // FILES_PER_DIR, j))
    ignore = b"node_modules/\n*.o\n"
    chunks.append(b"M 100644 inline .gitignore\ndata %d\n%s\n" % (len(ignore), ignore))
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, env=env, input=b"".join(chunks), check=True)
    # The user's own checkout, as wswarm runs from one (its files are never touched by either side).
    git("reset", "--hard", "-q", cwd=path, env=env)
    return git("rev-parse", "HEAD", cwd=path, env=env).strip()


def task_work(worktree: Path, i: int, files: int, env: dict[str, str]) -> str:
    """The task itself (untimed): one line appended to a file spread over the tree, committed."""
    j = (i * 7919) % files
    target = worktree / f"src/d{j // FILES_PER_DIR:03d}/f{j:05d}.txt"
    with target.open("a", encoding="utf-8") as f:
        f.write(f"task {i}\n")
    git("-c", "commit.gpgsign=false", "commit", "-qam", f"task {i}", cwd=worktree, env=env)
    return git("rev-parse", "HEAD", cwd=worktree, env=env).strip()


def run_fresh(repo: Path, base: str, tasks: int, files: int, env: dict[str, str], tag: str) -> dict[str, object]:
    root = repo / ".git" / "bench-fresh"
    root.mkdir(exist_ok=True)
    adds, removes, head, size = [], [], base, 0
    for i in range(tasks):
        path = root / f"{tag}-{i:03d}"        # unique basenames: parallel adds can fail otherwise
        t0 = time.perf_counter()
        git("worktree", "add", "-q", "-b", f"bench/{tag}/fresh/{i}", path, head, cwd=repo, env=env)
        adds.append(time.perf_counter() - t0)
        if i == 0:
            size = folder_bytes(path)
        head = task_work(path, i, files, env)
        t0 = time.perf_counter()
        git("worktree", "remove", "--force", path, cwd=repo, env=env)
        removes.append(time.perf_counter() - t0)
    return {"acquire": adds, "release": removes, "disk_bytes": size}


def run_slots(repo: Path, base: str, tasks: int, files: int, env: dict[str, str], tag: str) -> dict[str, object]:
    # The product's own code, with this bench's git environment (no user config, an identity).
    os.environ.update({k: v for k, v in env.items() if k.startswith("GIT_") or k == "HOME"})
    t0 = time.perf_counter()
    pool = SlotPool(Repo.discover(repo), size=1, start=Sha(base)).open()
    acquires, releases, head = [], [], base
    try:
        first = True
        for i in range(tasks):
            t1 = time.perf_counter()
            path = pool.acquire(name=f"t{i}", branch=BranchName(f"bench/{tag}/slot/{i}"), start=Sha(head))
            took = time.perf_counter() - t1
            if first:
                # The first acquire waits for the slot's own checkout: a one-time cost, shown apart.
                made, first = time.perf_counter() - t0, False
            else:
                acquires.append(took)
            head = task_work(path, i, files, env)
            t1 = time.perf_counter()
            pool.release(path, keep=False)
            releases.append(time.perf_counter() - t1)
        size = folder_bytes(path)
    finally:
        pool.close()
    return {"acquire": acquires, "release": releases, "made_s": made, "disk_bytes": size}


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "mean": statistics.fmean(values)}


def per_task(side: dict[str, object]) -> list[float]:
    acq, rel = side["acquire"], side["release"]
    assert isinstance(acq, list) and isinstance(rel, list)
    rel = rel[-len(acq):]          # slots: the first task's acquire is the slot's making
    return [a + r for a, r in zip(acq, rel)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", "-m", type=int, default=50_000, help="files in the repository (default 50,000)")
    parser.add_argument("--tasks", "-n", type=int, default=20, help="tasks per side (default 20)")
    parser.add_argument("--repeat", "-r", type=int, default=2, help="runs of both sides (default 2)")
    parser.add_argument("--tmp", type=Path, default=default_tmp() or Path(tempfile.gettempdir()),
                        help="where the repository goes (default: /dev/shm when it exists; --tmp /tmp to "
                             "measure on disk, where fresh worktrees take 10-40 s each here: use --tasks 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.files < 100 or args.repeat < 1:
        parser.error("--tasks must be at least 2, --files at least 100, --repeat at least 1")
    root = Path(tempfile.mkdtemp(prefix="wswarm-bench-wt-", dir=args.tmp))
    try:
        env = bench_env(root)
        repo = root / "repo"
        t0 = time.perf_counter()
        base = generate(repo, args.files, env)
        print(f"{args.files} files generated in {time.perf_counter() - t0:.1f}s under {root} "
              f"({filesystem(root)})", file=sys.stderr)
        runs = []
        for r in range(args.repeat):
            order = ("fresh", "slots") if r % 2 == 0 else ("slots", "fresh")
            result: dict[str, dict[str, object]] = {}
            for side in order:
                fn = run_fresh if side == "fresh" else run_slots
                result[side] = fn(repo, base, args.tasks, args.files, env, f"r{r}")
                ms = stats([x * 1000 for x in per_task(result[side])])
                print(f"  #{r + 1} {side}: {ms['median']:.0f} ms/task ({ms['min']:.0f}–{ms['max']:.0f})",
                      file=sys.stderr, flush=True)
            runs.append(result)
        info = machine(root, None)
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report = summarize(runs, args)
    if args.json:
        print(json.dumps({"machine": info, **report}, indent=2))
    else:
        print(render(report, info))
    return 0


def summarize(runs: list[dict[str, dict[str, object]]], args: argparse.Namespace) -> dict[str, object]:
    sides: dict[str, object] = {}
    for side in ("fresh", "slots"):
        every = [x * 1000 for run in runs for x in per_task(run[side])]
        acq = [x * 1000 for run in runs for x in run[side]["acquire"]]  # type: ignore[attr-defined]
        rel = [x * 1000 for run in runs for x in run[side]["release"]]  # type: ignore[attr-defined]
        sides[side] = {"ms_per_task": stats(every), "acquire_ms": stats(acq), "release_ms": stats(rel),
                       "disk_mb": statistics.median(float(run[side]["disk_bytes"]) for run in runs) / 2**20}  # type: ignore[arg-type]
    made = [float(run["slots"]["made_s"]) for run in runs]  # type: ignore[arg-type]
    ratios = [statistics.fmean(per_task(run["fresh"])) / statistics.fmean(per_task(run["slots"])) for run in runs]
    return {"files": args.files, "tasks": args.tasks, "repeat": args.repeat, "sides": sides,
            "ratio": stats(ratios), "slot_made_s": stats(made)}


def render(report: dict[str, object], info: dict[str, object]) -> str:
    sides = report["sides"]
    assert isinstance(sides, dict)

    def fmt(s: dict[str, float], spec: str = ".0f") -> str:
        return f"{s['median']:{spec}} ({s['min']:{spec}}–{s['max']:{spec}})"

    lines = [f"worktree cost per task — {info['date']}, {info['cores']} cores, {info['git']}, {info['filesystem']}",
             f"{report['files']} files, {report['tasks']} tasks × {report['repeat']} run(s); ms: median (min–max) "
             "over the tasks", ""]
    for side in ("fresh", "slots"):
        s = sides[side]
        lines.append(f"{side:>6}: {fmt(s['ms_per_task'])} ms/task = acquire {fmt(s['acquire_ms'])} + release "
                     f"{fmt(s['release_ms'])}; one checkout {s['disk_mb']:.0f} MB")
    ratio, made = report["ratio"], report["slot_made_s"]
    assert isinstance(ratio, dict) and isinstance(made, dict)
    lines += ["", f"fresh / slots (means per run): {fmt(ratio, '.1f')}×; making the slot once: "
                  f"{fmt(made, '.2f')} s"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
