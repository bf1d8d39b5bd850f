"""A real redis-server per test session: a free port on 127.0.0.1, a temporary folder, append-only
persistence (as a user's would run), stopped at the end of the session.

`redis_server` gives its URL; `redis_restart` stops and starts it on the same port and folder (what a
crashed and restarted Redis looks like to its clients).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            reason = "redis-server is not installed (scripts/install-test-tools installs it)"
            if os.environ.get("CI"):     # CI installs it: missing there is a failure, never a skip
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen([exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                                      "--appendonly", "yes", "--save", "", "--daemonize", "no",
                                      "--protected-mode", "yes"],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            if self._pong():
                return
            time.sleep(0.02)
        raise AssertionError("redis-server did not answer within 10 s")

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()    # SIGTERM: redis-server flushes its append-only file and exits
            self.proc.wait(timeout=10)
        self.proc = None

    def flush(self) -> None:
        """Forget every key (a test starts from an empty server)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(port=_free_port(), dir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server(redis_session: RedisServer) -> Iterator[RedisServer]:
    """The session's server, emptied for this test (and started again if a test stopped it)."""
    if redis_session.proc is None or redis_session.proc.poll() is not None:
        redis_session.start()
    redis_session.flush()
    yield redis_session
