"""Expected failures: one clear line, a hint, and a documented exit code."""

from __future__ import annotations

import errno
import os
import secrets
import sqlite3
import stat
import tempfile
import time
import traceback
from pathlib import Path

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class WswarmError(Exception):
    """An expected failure shown to the user as one line plus an optional hint."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(WswarmError):
    """Bad input: a plan, a flag, a config key. Nothing was created."""


class PlanError(UsageError):
    """The plan file is not a valid plan."""


class ConfigError(UsageError):
    """wswarm.toml or [tool.wswarm] is not valid."""


class NotARepositoryError(UsageError):
    """The command must run inside a git repository with at least one commit."""


class RunNotFoundError(UsageError):
    """No run matches what the user asked for."""


class CommandError(WswarmError):
    """A subprocess failed; carries its argv, exit code and output."""

    def __init__(self, argv: list[str], returncode: int, output: str) -> None:
        shown = " ".join(argv)
        tail = output.strip().splitlines()[-5:]
        detail = ("\n" + "\n".join(tail)) if tail else ""
        super().__init__(f"command failed (exit {returncode}): {shown}{detail}")
        self.argv = argv
        self.returncode = returncode
        self.output = output


class DiskFullError(WswarmError):
    """The disk (or a file-size limit) refused a write of the run's state. The run stops as if
    interrupted: what was written before stays valid, and `wswarm resume` continues."""

    exit_code = EXIT_INTERRUPTED


# errno values that mean "no room to write": no space, quota exceeded, file too large.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_room(exc: BaseException) -> bool:
    """Whether EXC is the disk refusing a write (an OSError, or SQLite saying so)."""
    if isinstance(exc, OSError):
        return exc.errno in NO_ROOM
    # SQLite reports a refused write as SQLITE_FULL, or as an I/O error when the OS said EFBIG.
    return isinstance(exc, sqlite3.OperationalError) and any(
        words in str(exc).lower() for words in ("disk is full", "disk i/o error"))


class RefMovedError(WswarmError):
    """A compare-and-swap ref update found the ref somewhere else: someone moved it."""


def crash_log() -> Path:
    """Write the traceback being handled to a new file of its own, readable by us alone, and return
    its path (a bug's report). A traceback can quote task text, paths and what surrounds secrets."""
    path = crash_dir() / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}.log"
    # O_EXCL and O_NOFOLLOW: never write through a link, or into a file someone else prepared.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(traceback.format_exc())
    return path


def crash_dir() -> Path:
    """A folder only we can use: $XDG_STATE_HOME/wswarm/crashes (~/.local/state by default), made
    0700; a fresh private temporary folder when that one is a link, someone else's, or cannot be made."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    folder = Path(state) / "wswarm" / "crashes"
    try:
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        private = _private(folder.parent) and _private(folder)
    except OSError:   # a read-only or missing home
        private = False
    return folder if private else Path(tempfile.mkdtemp(prefix="wswarm-crash-"))


def _private(folder: Path) -> bool:
    """FOLDER is a real folder (not a link) of ours; a mode wider than 0700 is narrowed."""
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        return False
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(folder, 0o700)
    return True
