"""What the bench knows about the machine: CPU use, other load, the filesystem, git's own trace."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

# A pair whose sides both ran while other processes kept fewer cores than this busy is "quiet".
QUIET_CORES = 0.25


def read_trace(path: Path) -> dict[str, tuple[int, float]]:
    """git command -> (processes, seconds) from a GIT_TRACE2_EVENT file, counting the processes the
    orchestrator started (git's own child processes are inside their parent's time)."""
    names: dict[str, str] = {}
    out: dict[str, tuple[int, float]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        sid = event.get("sid", "")
        if "/" in sid:
            continue
        if event.get("event") == "start":
            words = list(event["argv"][1:])
            while words and words[0].startswith("-"):     # git's own options come before the command
                words = words[2:] if words[0] in ("-c", "-C", "--git-dir", "--work-tree") else words[1:]
            name = words[0] if words else "?"
            if name == "worktree" and len(words) > 1:
                name += " " + words[1]
            if name == "diff" and "--numstat" in words:
                name += " --numstat"
            elif name == "diff" and "--cached" in words:
                name += " --cached"
            names[sid] = name
        elif event.get("event") == "exit" and sid in names:
            count, secs = out.get(names[sid], (0, 0.0))
            out[names[sid]] = (count + 1, secs + float(event["t_abs"]))
    return out


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot, from /proc/stat (0 where unavailable)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_idle(limit: float, *, threshold: float = QUIET_CORES) -> float:
    """Wait up to LIMIT seconds for a second in which other processes keep under THRESHOLD cores busy;
    return the load of the last second measured. On a shared machine this keeps one side from running
    beside someone's test suite while the other side runs alone."""
    deadline = time.monotonic() + limit
    load = 0.0
    while True:
        busy0 = machine_busy()
        time.sleep(1.0)
        load = machine_busy() - busy0
        if load < threshold or time.monotonic() >= deadline:
            return load


def cpu_seconds() -> float:
    """User + system time of this process and of every child it has waited for."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def default_tmp() -> Path | None:
    """tmpfs when there is one: on this VM's ext4 (mounted with `discard`) a 5,000-file checkout costs
    0.7 s fresh but 2.5-4 s of kernel time after file churn, which swamps what is being measured."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def filesystem(path: Path) -> str:
    """The type of the filesystem holding PATH, from /proc/mounts (the longest mount point wins)."""
    best, kind = "", "?"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 4 and (target == parts[1] or target.startswith(parts[1].rstrip("/") + "/")):
            if len(parts[1]) > len(best):
                best, kind = parts[1], f"{parts[2]} ({parts[3].split(',')[0]}{', discard' if 'discard' in parts[3] else ''}) at {parts[1]}"
    return kind


def source_commit() -> str:
    """The commit of the wswarm checkout this bench belongs to, "+changes" when the package differs from
    it, so that numbers name the code they measured."""
    here = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=here, capture_output=True, text=True)
    if head.returncode != 0:
        return "?"
    changed = subprocess.run(["git", "status", "--porcelain", "--", "worktree_swarm"], cwd=here,
                             capture_output=True, text=True).stdout.strip()
    return head.stdout.strip() + (" +changes" if changed else "")


def machine(root: Path, wswarm: str | None) -> dict[str, object]:
    git_version = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip()
    return {"wswarm_commit": f"{wswarm} (--wswarm)" if wswarm else source_commit(), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "cores": os.cpu_count(), "git": git_version,
            "python": platform.python_version(), "platform": platform.platform(),
            "filesystem": filesystem(root)}
