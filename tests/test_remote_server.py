"""The test sessions' redis-server: real, private to the session, and durable across a restart."""

from __future__ import annotations

import redis

from tests.redis_server import RedisServer


def test_server_keeps_a_stream_across_a_restart(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create("s", "g", id="0", mkstream=True)
    entry = client.xadd("s", {"k": "v"})
    assert client.xreadgroup("g", "c1", {"s": ">"}, count=1)[0][1][0][0] == entry
    client.close()
    redis_server.stop()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    # The entry and its place in the pending list survive: append-only persistence.
    pending = client.xpending("s", "g")
    assert pending["pending"] == 1 and pending["consumers"][0]["name"] == b"c1"
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    client.close()
