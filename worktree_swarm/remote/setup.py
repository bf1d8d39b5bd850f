"""Choosing workers for a run: what `start --redis` checks before anything is created, and the executor.

Nothing here imports the Redis client at module level: it is an optional dependency, needed only by
distributed runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from worktree_swarm.config import DistributedConfig
from worktree_swarm.git.repo import Repo
from worktree_swarm.util import proc
from worktree_swarm.util.errors import UsageError

if TYPE_CHECKING:
    from worktree_swarm.remote.executor import RedisExecutor
    from worktree_swarm.store.run_store import RunStore

DEFAULT_LEASE = 30.0
DEFAULT_REMOTE_AGENTS = 32
URL_ENV = "WSWARM_REDIS_URL"     # where a Redis URL with a password comes from when it is not on the command line


@dataclass(frozen=True)
class Distributed:
    """Attempts go to workers through Redis at REDIS_URL; code through the git remote REMOTE."""

    redis_url: str
    remote: str = "origin"
    lease: float = DEFAULT_LEASE     # seconds without a heartbeat before an attempt is taken back
    url_env: str | None = None       # the variable REDIS_URL was read from, if any
    agents: int = DEFAULT_REMOTE_AGENTS   # attempts on workers at once (the run's --agents run here)

    def record(self) -> dict[str, Any]:
        """What the run's options keep, to reconnect on resume: never the password."""
        return {"redis_url": without_password(self.redis_url), "password": has_password(self.redis_url),
                "remote": self.remote, "lease": self.lease, "redis_url_env": self.url_env, "agents": self.agents}


def local_agents(options: Mapping[str, Any]) -> int:
    """How many attempts a run with OPTIONS runs on this machine at once. A distributed run recorded
    before agents could run beside workers kept its bound on workers in `agents`, and ran none here."""
    data = options.get("distributed")
    if isinstance(data, dict) and "agents" not in data:
        return 0
    return int(options["agents"])


def has_password(url: str) -> bool:
    rest = url.partition("://")[2]
    return "@" in rest.split("/", 1)[0]


def without_password(url: str) -> str:
    """URL with its credentials left out (they are a secret: never in a file or on a screen)."""
    scheme, sep, rest = url.partition("://")
    where, slash, path = rest.partition("/")
    return scheme + sep + where.rpartition("@")[2] + slash + path


def recorded(options: Mapping[str, Any], environ: Mapping[str, str]) -> Distributed | None:
    """The distributed settings a run recorded, its password (if it had one) read again from the
    environment; None for a local run. Refused (exit 2) when the password is needed and missing, or
    when the environment names another Redis than the run's."""
    data = options.get("distributed")
    if not isinstance(data, dict):
        return None
    url, var = str(data["redis_url"]), data.get("redis_url_env") or URL_ENV
    given = environ.get(var)
    if given:
        if without_password(given) != url:
            raise UsageError(f"this run's attempts went through Redis at {url}, but {var} names {without_password(given)}",
                             hint=f"set {var} to the run's Redis (with its password), or unset it")
        url = given
    elif data.get("password"):
        raise UsageError(f"this run's Redis at {url} needs a password, which wswarm does not keep",
                         hint=f"export {var}=redis://:PASSWORD@{url.partition('://')[2]} and resume again")
    # A run recorded before agents could run beside workers bounded its workers by its `agents`.
    agents = int(data.get("agents") or options.get("agents") or DEFAULT_REMOTE_AGENTS)
    return Distributed(url, remote=str(data.get("remote") or "origin"), lease=float(data.get("lease") or DEFAULT_LEASE),
                       url_env=data.get("redis_url_env"), agents=agents)


def configured(cfg: DistributedConfig, environ: Mapping[str, str]) -> Distributed | None:
    """The settings of a `[distributed]` section, the URL read from its variable when it names one
    and that is set; None without the section. Refused (exit 2) when it names only a variable, unset."""
    if not cfg.enabled:
        return None
    url = environ.get(cfg.redis_url_env) if cfg.redis_url_env else None
    if not url:
        if cfg.redis_url is None:
            raise UsageError(f"[distributed] takes the Redis URL from {cfg.redis_url_env}, which is not set",
                             hint=f"export {cfg.redis_url_env}=redis://[:PASSWORD@]HOST:PORT/DB")
        url = cfg.redis_url
    return Distributed(url, remote=cfg.remote, lease=cfg.lease, url_env=cfg.redis_url_env, agents=cfg.remote_agents)


def chosen(cfg: DistributedConfig, environ: Mapping[str, str], *, redis_url: str | None = None,
           remote: str | None = None, lease: float | None = None, agents: int | None = None) -> Distributed | None:
    """Where a new run's attempts go: the command line's settings over the `[distributed]` section's,
    each on its own (`--redis` alone keeps the section's remote, lease and bound). None for a local
    run; refused (exit 2) when a setting for workers is given without any Redis to reach them."""
    if redis_url is not None:
        dist: Distributed | None = Distributed(redis_url, remote=cfg.remote, lease=cfg.lease, agents=cfg.remote_agents)
    else:
        dist = configured(cfg, environ)
    if dist is None:
        given = [flag for flag, value in (("--remote", remote), ("--lease", lease), ("--remote-agents", agents))
                 if value is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for runs on workers, "
                             "and this run has no Redis to reach them",
                             hint="add --redis URL, or a [distributed] section in wswarm.toml (docs/distributed.md)")
        return None
    return Distributed(dist.redis_url, remote=remote or dist.remote, lease=lease or dist.lease,
                       url_env=dist.url_env, agents=agents or dist.agents)


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


def open_executor(repo: Repo, store: RunStore, dist: Distributed) -> RedisExecutor:
    """The executor sending the run's attempts to workers, at most DIST.agents at once."""
    from worktree_swarm.remote import protocol
    from worktree_swarm.remote.client import connect
    from worktree_swarm.remote.executor import RedisExecutor

    return RedisExecutor(repo=repo, store=store, client=connect(dist.redis_url), key=protocol.cluster_key(os.environ),
                         remote=dist.remote, agents=dist.agents, lease=dist.lease)
