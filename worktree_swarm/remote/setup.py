"""Choosing workers for a run: what `start --redis` checks before anything is created, and the executor.

Nothing here imports the Redis client at module level: it is an optional dependency, needed only by
distributed runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worktree_swarm.git.repo import Repo
from worktree_swarm.util import proc
from worktree_swarm.util.errors import UsageError

if TYPE_CHECKING:
    from worktree_swarm.remote.executor import RedisExecutor
    from worktree_swarm.store.run_store import RunStore

DEFAULT_LEASE = 30.0


@dataclass(frozen=True)
class Distributed:
    """Attempts go to workers through Redis at REDIS_URL; code through the git remote REMOTE."""

    redis_url: str
    remote: str = "origin"
    lease: float = DEFAULT_LEASE     # seconds without a heartbeat before an attempt is taken back


def check(repo: Repo, dist: Distributed) -> None:
    """Refuse (exit 2, nothing created) without the client, the cluster key, Redis or the remote."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise UsageError("distributed runs need the redis client, which is not installed",
                         hint="pip install 'worktree-swarm[distributed]'") from None
    from worktree_swarm.remote import protocol
    from worktree_swarm.remote.client import connect

    protocol.cluster_key(os.environ)
    if proc.git("remote", "get-url", dist.remote, cwd=repo.root, check=False).returncode != 0:
        raise UsageError(f"this repository has no remote named {dist.remote!r} to share code with workers through",
                         hint="git remote add origin URL (a remote every worker can reach), or pass --remote NAME")
    connect(dist.redis_url).close()


def open_executor(repo: Repo, store: RunStore, dist: Distributed, *, agents: int) -> RedisExecutor:
    from worktree_swarm.remote import protocol
    from worktree_swarm.remote.client import connect
    from worktree_swarm.remote.executor import RedisExecutor

    return RedisExecutor(repo=repo, store=store, client=connect(dist.redis_url), key=protocol.cluster_key(os.environ),
                         remote=dist.remote, agents=agents, lease=dist.lease)
