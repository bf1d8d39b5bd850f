"""`wswarm worker`: serve the attempts of any run of one repository, from a clone of its own."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from worktree_swarm.config import load_config
from worktree_swarm.gate.detect import with_detected_checks
from worktree_swarm.git.repo import Repo, require_git
from worktree_swarm.git.slots import open_pool
from worktree_swarm.remote import gitwire
from worktree_swarm.remote import protocol as p
from worktree_swarm.remote.client import connect
from worktree_swarm.remote.worker import Say, Worker, default_name
from worktree_swarm.store import layout
from worktree_swarm.util.errors import CommandError, UsageError
from worktree_swarm.util.types import Sha


@dataclass(frozen=True)
class WorkerOptions:
    redis_url: str
    repo_url: str
    agents: int = 2
    name: str | None = None
    dir: Path | None = None
    agent_cmd: str | None = None


def worker(*, options: WorkerOptions, say: Say, stop: threading.Event | None = None) -> int:
    """Check the cluster key, Redis and the clone; then serve until SIGTERM, SIGINT or STOP. Returns
    how many attempts it ran."""
    key = p.cluster_key(os.environ)
    client = connect(options.redis_url)
    repo = _clone(options.repo_url, options.dir or default_dir(options.repo_url))
    require_git(repo.root)
    names = p.Names(p.repository_id(gitwire.roots(repo)))
    config, _ = with_detected_checks(load_config(repo.root), repo.root)
    name = options.name or default_name()
    if client.exists(p.worker_key(name)):
        raise UsageError(f"a worker named {name!r} is already running", hint="give this one another --name")
    pool = open_pool(repo, config.worktree, size=options.agents, start=Sha(repo.resolve_commit("HEAD")),
                     fresh_root=layout.worktrees_dir(repo.state_dir))
    stop = stop or threading.Event()
    _stop_on_signals(stop)
    w = Worker(client=client, key=key, repo=repo, remote="origin", config=config, pool=pool, names=names,
               name=name, agents=options.agents, agent_cmd=options.agent_cmd, say=say)
    w.register(busy=0)
    say(f"{name}: serving repository {names.repo} from {repo.root} with {options.agents} agents")
    try:
        w.serve(stop)
    finally:
        pool.close()
        client.close()
    return w.done


def default_dir(repo_url: str) -> Path:
    digest = hashlib.sha256(repo_url.encode()).hexdigest()[:12]
    return Path.home() / ".local" / "share" / "wswarm" / "workers" / digest


def _clone(url: str, path: Path) -> Repo:
    """The worker's clone at PATH: made when missing, refused when it is a clone of something else."""
    if path.exists() and any(path.iterdir()):
        origin = gitwire.origin_url(path)
        if origin is None:
            raise UsageError(f"{path} is not a clone (no remote named origin)",
                             hint="pass --dir with an empty folder or a clone of --repo")
        if origin != url:
            raise UsageError(f"the clone at {path} is of another repository (origin is {origin}, not {url})",
                             hint="pass --dir with an empty folder, or the clone of that repository")
        try:
            gitwire.fetch_all(path)
        except CommandError as exc:
            raise UsageError(f"cannot fetch from {url}: {exc.output.strip().splitlines()[-1:] or exc}",
                             hint="check the URL and that this machine can reach it") from None
    else:
        try:
            gitwire.clone(url, path)
        except CommandError as exc:
            lines = exc.output.strip().splitlines()
            raise UsageError(f"cannot clone {url}: {lines[-1] if lines else exc}",
                             hint="check the URL and that this machine can reach it") from None
    return Repo.discover(path)


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: stop.set())
