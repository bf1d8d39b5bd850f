"""The Redis connection both sides use: AUTH and TLS come from the URL (redis://:pw@host, rediss://)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import redis

from worktree_swarm.util.errors import UsageError


def connect(url: str) -> redis.Redis:
    """A client for URL that has answered a PING; a clear refusal (exit 2) when it does not."""
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=15)
    except ValueError as exc:
        raise UsageError(f"not a Redis URL: {url} ({exc})",
                         hint="redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss:// for TLS") from None
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise UsageError(f"Redis at {_shown(url)} refused the password: {exc}",
                         hint="put the password in the URL: redis://:PASSWORD@HOST:PORT") from None
    except redis.RedisError as exc:
        raise UsageError(f"cannot reach Redis at {_shown(url)}: {exc}",
                         hint="start redis-server there, or pass the right --redis URL") from None
    return client


def _shown(url: str) -> str:
    """URL without its password (it is a credential)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


T = TypeVar("T")


def retrying(fn: Callable[[], T], *, for_s: float, on_wait: Callable[[Exception], None] = lambda exc: None) -> T:
    """FN, called again while Redis is unreachable (a restart), for up to FOR_S seconds; then its error."""
    deadline = time.monotonic() + for_s
    delay = 0.1
    while True:
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
            if time.monotonic() >= deadline:
                raise
            on_wait(exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
